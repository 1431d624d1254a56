r"""Samplers for rectified flow (t = 1 noise → t = 0 data), k-diffusion style.

Every sampler is a pure function with the same signature::

    sampler(model, noise, timesteps, generator=None, callback=None) -> x0

* ``model(x_t, t) -> v`` with ``t`` of shape (B,) (wrap guided/conditional networks first,
  e.g. with :class:`~pid.diffusion.guidance.DualCFG`);
* ``noise``: the initial state at ``timesteps[0]`` (pure Gaussian noise for t₀ ≈ 1);
* ``timesteps``: decreasing 1-D grid ending at 0 (:mod:`pid.diffusion.schedules`);
* ``generator``: source of the fresh noise of stochastic samplers (ignored by ODE samplers);
* ``callback``: called after every step with a dict ``{"i", "x", "t", "t_next", "denoised"}``.

The state is carried in float32 (or the noise dtype if wider, e.g. float64); times are passed
to the model in the same dtype. Model outputs are cast up before any arithmetic.

Samplers do not switch autograd off (a DMD2 backward-simulation rollout may want gradients
through a step): wrap inference calls in ``torch.no_grad()`` / ``torch.inference_mode()``.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor

from ._util import compute_dtype, randn_like
from .flow import x0_from_v
from .guidance import DualCFG, dual_cfg

__all__ = [
    "sample_euler", "sample_heun", "sample_sde", "sample_dpmpp_2m", "SAMPLERS", "get_sampler",
    "DualCFG", "dual_cfg",
]

Model = Callable[[Tensor, Tensor], Tensor]


def _prepare(noise: Tensor, timesteps: Sequence[float] | Tensor) -> tuple[Tensor, list[float]]:
    x = noise.to(compute_dtype(noise))
    ts = [float(t) for t in (timesteps.tolist() if isinstance(timesteps, Tensor) else timesteps)]
    if len(ts) < 2:
        raise ValueError("timesteps needs at least two entries (start and end)")
    if any(b >= a for a, b in zip(ts, ts[1:])):
        raise ValueError(f"timesteps must be strictly decreasing, got {ts}")
    return x, ts


def _call(model: Model, x: Tensor, t: float) -> Tensor:
    t_batch = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
    return model(x, t_batch).to(x.dtype)


def sample_euler(
    model: Model,
    noise: Tensor,
    timesteps: Sequence[float] | Tensor,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
) -> Tensor:
    r"""Euler integration of the flow ODE :math:`dx/dt = v(x, t)` (multistep teacher sampling).

    :math:`x_{i+1} = x_i + (t_{i+1} - t_i)\, v(x_i, t_i)`; the last step to t = 0 equals
    :math:`\hat x_0 = x - t\,v`. Deterministic (``generator`` unused). Returns the state at
    ``timesteps[-1]``.
    """
    x, ts = _prepare(noise, timesteps)
    for i, (t_cur, t_next) in enumerate(zip(ts, ts[1:])):
        v = _call(model, x, t_cur)
        denoised = x - t_cur * v
        x = x + (t_next - t_cur) * v
        if callback is not None:
            callback({"i": i, "x": x, "t": t_cur, "t_next": t_next, "denoised": denoised})
    return x


def sample_heun(
    model: Model,
    noise: Tensor,
    timesteps: Sequence[float] | Tensor,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
) -> Tensor:
    r"""Heun's 2nd-order method on the flow ODE (EDM Alg. 1 without churn).

    Euler predictor, then the trapezoidal corrector
    :math:`x_{i+1} = x_i + (t_{i+1} - t_i)\,[v(x_i, t_i) + v(\tilde x_{i+1}, t_{i+1})]/2`, except on
    the final step to t = 0, which stays Euler. Two model calls per step but the last.
    """
    x, ts = _prepare(noise, timesteps)
    for i, (t_cur, t_next) in enumerate(zip(ts, ts[1:])):
        v = _call(model, x, t_cur)
        denoised = x - t_cur * v
        x_next = x + (t_next - t_cur) * v
        if t_next > 0:
            v_next = _call(model, x_next, t_next)
            x_next = x + (t_next - t_cur) * 0.5 * (v + v_next)
        x = x_next
        if callback is not None:
            callback({"i": i, "x": x, "t": t_cur, "t_next": t_next, "denoised": denoised})
    return x


def sample_sde(
    model: Model,
    noise: Tensor,
    timesteps: Sequence[float] | Tensor,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
) -> Tensor:
    r"""Few-step "SDE" sampler of the DMD2 student: denoise, then re-noise with *fresh* noise.

    At each :math:`t_i`: :math:`\hat x_0 = x - t_i\, v(x, t_i)`, then
    :math:`x \leftarrow (1 - t_{i+1})\,\hat x_0 + t_{i+1}\,\varepsilon` with a new
    :math:`\varepsilon \sim \mathcal N(0, I)` from ``generator``. The last step returns
    :math:`\hat x_0` (no noise is drawn when :math:`t_{i+1} = 0`), so the result is always the
    final prediction. PiD's student: ``student_timesteps()`` = [0.999, 0.866, 0.634, 0.342, 0].
    """
    x, ts = _prepare(noise, timesteps)
    denoised = x
    for i, (t_cur, t_next) in enumerate(zip(ts, ts[1:])):
        v = _call(model, x, t_cur)
        denoised = x0_from_v(x, v, t_cur)
        if i == len(ts) - 2 or t_next == 0:
            x = denoised
        else:
            x = (1 - t_next) * denoised + t_next * randn_like(denoised, generator=generator)
        if callback is not None:
            callback({"i": i, "x": x, "t": t_cur, "t_next": t_next, "denoised": denoised})
    return denoised


def sample_dpmpp_2m(
    model: Model,
    noise: Tensor,
    timesteps: Sequence[float] | Tensor,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
) -> Tensor:
    r"""DPM-Solver++(2M), multistep 2nd order in data prediction (Lu et al. 2022, "DPM-Solver++", Alg. 2).

    The flow x_t = α_t x₀ + σ_t ε with α_t = 1 − t, σ_t = t and half-log-SNR λ_t = log(α_t / σ_t). With
    :math:`\hat x_0 = x - t\,v` at each grid time and :math:`h_i = λ_{t_{i+1}} − λ_{t_i}`:

    * step 0 (and the last step, order 1 there): :math:`x_{i+1} = \frac{σ_{i+1}}{σ_i} x_i
      − α_{i+1}(e^{−h_i} − 1)\hat x_0^{(i)}`;
    * otherwise, with :math:`r = h_{i−1}/h_i` and :math:`D = (\hat x_0^{(i)} − \hat x_0^{(i−1)}) / r`:
      :math:`x_{i+1} = \frac{σ_{i+1}}{σ_i} x_i − α_{i+1}(e^{−h_i} − 1)(\hat x_0^{(i)} + D/2)`.

    The final step to t = 0 returns :math:`\hat x_0` exactly. This is the teacher sampler of the official PiD
    release (``DPMS(..., order=2, method="multistep", lower_order_final=True, solver_type="dpmsolver")``);
    grid: :func:`pid.diffusion.schedules.official_teacher_timesteps`. Deterministic (``generator`` unused).
    """
    x, ts = _prepare(noise, timesteps)
    x0_prev: Tensor | None = None
    h_prev = 0.0
    n = len(ts) - 1
    for i, (t_cur, t_next) in enumerate(zip(ts, ts[1:])):
        v = _call(model, x, t_cur)
        denoised = x0_from_v(x, v, t_cur)
        if t_next == 0:
            x = denoised
        else:
            lam_cur, lam_next = math.log((1 - t_cur) / t_cur), math.log((1 - t_next) / t_next)
            h = lam_next - lam_cur
            phi = math.expm1(-h)
            data = denoised
            if x0_prev is not None and i < n - 1:  # 2nd order but on the first and the last step
                r = h_prev / h
                data = denoised + 0.5 * (denoised - x0_prev) / r
            x = (t_next / t_cur) * x - ((1 - t_next) * phi) * data
            h_prev = h
        x0_prev = denoised
        if callback is not None:
            callback({"i": i, "x": x, "t": t_cur, "t_next": t_next, "denoised": denoised})
    return x


SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "sde": sample_sde,
    "dpmpp_2m": sample_dpmpp_2m,
}


def get_sampler(name: str) -> Callable[..., Tensor]:
    """Look a sampler up by name (``"euler"``, ``"heun"``, ``"sde"``, ``"dpmpp_2m"``) for configs."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; available: {sorted(SAMPLERS)}") from None
