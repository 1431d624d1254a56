r"""Rectified-flow algebra, in one place.

Convention (used everywhere in :mod:`pid`): ``t = 0`` is data, ``t = 1`` is noise.

.. math::

    x_t = (1 - t)\,x_0 + t\,\varepsilon, \qquad v = \frac{dx_t}{dt} = \varepsilon - x_0.

A *model* is any callable ``model(x_t, t) -> v`` with ``t`` of shape ``(B,)``.
Given the state ``x_t`` and any one of ``(x_0, \varepsilon, v)`` the other two follow:

=================  ==========================================
``x0_from_v``      :math:`x_0 = x_t - t\,v`
``eps_from_v``     :math:`\varepsilon = x_t + (1 - t)\,v`
``v_from_x0``      :math:`v = (x_t - x_0) / t`
``v_from_eps``     :math:`v = (\varepsilon - x_t) / (1 - t)`
``x0_from_eps``    :math:`x_0 = (x_t - t\,\varepsilon) / (1 - t)`
``eps_from_x0``    :math:`\varepsilon = (x_t - (1 - t)\,x_0) / t`
=================  ==========================================

All functions take tensors first and ``t`` last; ``t`` may be a float, a 0-d tensor or a
per-sample tensor of shape ``(B,)`` (broadcast over the remaining dims). Arithmetic runs in
the promoted dtype of the inputs, at least float32 (bf16 inputs give fp32 outputs).

Training-time sampling (docs/method.md §3): ``t ~ logit-normal(0, 1)`` followed by the SD3 time shift
``t' = s t / (1 + (s - 1) t)`` with the resolution-dependent ``s = 6 sqrt(sqrt(HW) / 2048)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._util import append_dims, compute_dtype, randn

__all__ = [
    "interpolate",
    "velocity",
    "x0_from_v",
    "eps_from_v",
    "v_from_x0",
    "v_from_eps",
    "x0_from_eps",
    "eps_from_x0",
    "v_from_edm_output",
    "resolution_shift",
    "release_shift",
    "shift_time",
    "unshift_time",
    "sample_logit_normal",
    "sample_training_t",
]


def _prep(t, *xs: Tensor):
    """Cast tensors to the compute dtype and broadcast ``t`` to them."""
    dtype = compute_dtype(*xs, *([t] if isinstance(t, Tensor) else []))
    xs = tuple(x.to(dtype) for x in xs)
    if isinstance(t, Tensor):
        t = append_dims(t.to(device=xs[0].device, dtype=dtype), xs[0].ndim)
    return (t, *xs)


# ---------------------------------------------------------------------------------------------
# Forward process and parameterisation converters
# ---------------------------------------------------------------------------------------------


def interpolate(x0: Tensor, eps: Tensor, t: Tensor | float) -> Tensor:
    """Forward process :math:`x_t = (1 - t) x_0 + t \\varepsilon` (t=0 data, t=1 noise)."""
    t, x0, eps = _prep(t, x0, eps)
    return (1 - t) * x0 + t * eps


def velocity(x0: Tensor, eps: Tensor) -> Tensor:
    """Flow-matching target :math:`v = \\varepsilon - x_0` (independent of t)."""
    dtype = compute_dtype(x0, eps)
    return eps.to(dtype) - x0.to(dtype)


def x0_from_v(x_t: Tensor, v: Tensor, t: Tensor | float) -> Tensor:
    """:math:`x_0 = x_t - t v` (one Euler step from t to 0)."""
    t, x_t, v = _prep(t, x_t, v)
    return x_t - t * v


def eps_from_v(x_t: Tensor, v: Tensor, t: Tensor | float) -> Tensor:
    """:math:`\\varepsilon = x_t + (1 - t) v` (one Euler step from t to 1)."""
    t, x_t, v = _prep(t, x_t, v)
    return x_t + (1 - t) * v


def v_from_x0(x_t: Tensor, x0: Tensor, t: Tensor | float) -> Tensor:
    """:math:`v = (x_t - x_0) / t`; singular at t = 0."""
    t, x_t, x0 = _prep(t, x_t, x0)
    return (x_t - x0) / t


def v_from_eps(x_t: Tensor, eps: Tensor, t: Tensor | float) -> Tensor:
    """:math:`v = (\\varepsilon - x_t) / (1 - t)`; singular at t = 1."""
    t, x_t, eps = _prep(t, x_t, eps)
    return (eps - x_t) / (1 - t)


def x0_from_eps(x_t: Tensor, eps: Tensor, t: Tensor | float) -> Tensor:
    """:math:`x_0 = (x_t - t \\varepsilon) / (1 - t)`; singular at t = 1."""
    t, x_t, eps = _prep(t, x_t, eps)
    return (x_t - t * eps) / (1 - t)


def eps_from_x0(x_t: Tensor, x0: Tensor, t: Tensor | float) -> Tensor:
    """:math:`\\varepsilon = (x_t - (1 - t) x_0) / t`; singular at t = 0."""
    t, x_t, x0 = _prep(t, x_t, x0)
    return (x_t - (1 - t) * x0) / t


def v_from_edm_output(x_t: Tensor, out: Tensor, t: Tensor | float, sigma_data: float = 0.5) -> Tensor:
    r"""The velocity of an EDM-preconditioned network output F on the flow path (docs/method.md (5a)).

    EDM (Karras et al. 2022, Table 1) writes the denoiser as
    :math:`\hat x_0 = c_\text{skip} x + c_\text{out} F` for :math:`x = x_0 + \sigma n`. The flow state
    is that with :math:`x = x_t / (1 - t)` and :math:`\sigma = t / (1 - t)`, which gives,
    with :math:`D = t^2 + (1 - t)^2 \sigma_d^2`,

    .. math::

        \hat x_0 = \frac{(1 - t)\,\sigma_d^2}{D}\,x_t + \frac{t\,\sigma_d}{\sqrt D}\,F, \qquad
        v = \frac{x_t - \hat x_0}{t} = \frac{t - (1 - t)\,\sigma_d^2}{D}\,x_t
            - \frac{\sigma_d}{\sqrt D}\,F.

    At t = 1 the output is x̂₀ itself (no noise to reproduce, as in x₀ prediction); towards t = 0 it is a
    correction of x_t scaled by t (as in v prediction), so x_t's detail passes through unchanged. The
    v-space loss weights F's error by σ_d² / D, between σ_d² and 1: no singularity at either end.
    ``sigma_data``: the data standard deviation (images in [-1, 1]: 0.5). Shapes as ``x_t``.
    """
    t, x_t, out = _prep(t, x_t, out)
    d = t * t + (1 - t) ** 2 * sigma_data**2
    return (t - (1 - t) * sigma_data**2) / d * x_t - sigma_data / d**0.5 * out


# ---------------------------------------------------------------------------------------------
# Time shift (SD3 §5.3.2) and training-time t sampling
# ---------------------------------------------------------------------------------------------


def resolution_shift(height: int, width: int, base: float = 6.0, ref_size: float = 2048) -> float:
    """Resolution-dependent shift :math:`s = \\text{base} \\sqrt{\\sqrt{HW} / \\text{ref}}`.

    PiD: ``base = 6``, ``ref = 2048`` → s = 6 at 2048², 6/√2 ≈ 4.24 at 1024², 6√2 at 4096².
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"height and width must be positive, got {(height, width)}")
    return float(base) * math.sqrt(math.sqrt(float(height) * float(width)) / float(ref_size))


SHIFT_RULES = ("area", "max_side", "static")


def release_shift(height: int, width: int, base: float = 6.0, ref_size: float = 2048,
                  rule: str = "area") -> float:
    """The time shift of a release's sampler for an output of ``height`` × ``width`` pixels.

    ``rule``: "area" — :func:`resolution_shift` (teachers, PixelDiT and training: base·√(√(HW)/ref));
    "max_side" — base·√(max(H, W)/ref) (what the official student inference computes, unused by its
    sampler); "static" — ``base`` whatever the size.
    """
    if rule == "area":
        return resolution_shift(height, width, base=base, ref_size=ref_size)
    if rule == "max_side":
        return float(base) * math.sqrt(max(height, width) / float(ref_size))
    if rule == "static":
        return float(base)
    raise ValueError(f"shift rule must be one of {SHIFT_RULES}, got {rule!r}")


def shift_time(t: Tensor | float, s: float) -> Tensor | float:
    """Time shift :math:`t' = s t / (1 + (s - 1) t)`.

    Monotone increasing on [0, 1] for s > 0, fixes 0 and 1; s > 1 moves mass towards noise.
    Equivalent to scaling the signal-to-noise ratio: :math:`t'/(1-t') = s \\cdot t/(1-t)`.
    """
    if s <= 0:
        raise ValueError(f"shift must be positive, got {s}")
    return s * t / (1 + (s - 1) * t)


def unshift_time(t_shifted: Tensor | float, s: float) -> Tensor | float:
    """Inverse of :func:`shift_time`: :math:`t = t' / (s - (s - 1) t')`."""
    if s <= 0:
        raise ValueError(f"shift must be positive, got {s}")
    return t_shifted / (s - (s - 1) * t_shifted)


def sample_logit_normal(
    n: int,
    mean: float = 0.0,
    std: float = 1.0,
    generator: torch.Generator | None = None,
    device=None,
) -> Tensor:
    """``n`` draws of :math:`t = \\mathrm{sigmoid}(\\mathcal{N}(\\text{mean}, \\text{std}^2))`, float32."""
    u = randn((n,), generator=generator, device=device, dtype=torch.float32)
    return torch.sigmoid(u * std + mean)


def sample_training_t(
    n: int,
    height: int,
    width: int,
    mean: float = 0.0,
    std: float = 1.0,
    shift: float | None = None,
    base_shift: float = 6.0,
    ref_size: float = 2048,
    generator: torch.Generator | None = None,
    device=None,
) -> Tensor:
    """Training times: logit-normal(mean, std) then :func:`shift_time` (float32, shape (n,)).

    ``shift=None`` uses :func:`resolution_shift` ``(height, width, base_shift, ref_size)``;
    pass a number to fix it (``shift=1`` disables shifting).
    """
    if shift is None:
        shift = resolution_shift(height, width, base=base_shift, ref_size=ref_size)
    t = sample_logit_normal(n, mean=mean, std=std, generator=generator, device=device)
    return shift_time(t, shift) if shift != 1.0 else t
