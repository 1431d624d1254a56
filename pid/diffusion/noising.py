r"""Latent-side noising: the σ-augmentation of the conditioning latent, and CFG dropout masks.

PiD trains the decoder on *noised* latents so that it can decode an LDM's intermediate state
(early exit) and so that σ becomes a fidelity/creativity knob (docs/method.md §3, §5):

* ``"flow"`` (FLUX/SD3/FLUX.2/RAE latents):  :math:`\tilde z = (1 - \sigma) z + \sigma \xi`
* ``"vp"``   (SDXL-style latents):            :math:`\tilde z = \sqrt{1 - \sigma^2}\, z + \sigma \xi`

with :math:`\xi \sim \mathcal N(0, I)` and :math:`\sigma \sim U(0, \sigma_{max})` drawn per sample
and applied with probability p (else σ = 0, i.e. the clean latent). σ ∈ [0, 1] in both forms;
it is a side input of the adapter, independent of the pixel timestep t.

Early exit from Euler/VE-frame samplers (SDXL's ``EulerDiscreteScheduler``): the state is
:math:`x^{ve} = z + \sigma_{ve} \xi`; dividing latent and σ by :math:`\sqrt{\sigma_{ve}^2 + 1}`
gives the VP training frame (:func:`ve_to_vp`), :func:`vp_to_ve` inverts it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._util import append_dims, compute_dtype, rand, randn

__all__ = [
    "NOISE_FORMS",
    "noise_latent",
    "sample_latent_sigma",
    "keep_mask",
    "ve_to_vp",
    "vp_to_ve",
]

NOISE_FORMS = ("flow", "vp")


def _as_sigma(sigma: Tensor | float, z: Tensor, dtype: torch.dtype) -> Tensor:
    sigma = torch.as_tensor(sigma, device=z.device, dtype=dtype)
    if sigma.ndim == 0:
        sigma = sigma.expand(z.shape[0])
    if sigma.shape != (z.shape[0],):
        raise ValueError(f"sigma must be a scalar or shape ({z.shape[0]},), got {tuple(sigma.shape)}")
    return sigma


def noise_latent(
    z: Tensor,
    sigma: Tensor | float,
    noise: Tensor | None = None,
    form: str = "flow",
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Noise the latent ``z`` (B, ...) at level ``sigma`` (scalar or (B,)).

    ``form="flow"``: :math:`(1 - \sigma) z + \sigma \xi`;  ``form="vp"``:
    :math:`\sqrt{1 - \sigma^2} z + \sigma \xi`. σ = 0 returns ``z`` exactly. ``noise`` (ξ) is drawn
    from ``generator`` when not given. Computed in fp32 (or wider), returned in ``z.dtype``.
    """
    if form not in NOISE_FORMS:
        raise ValueError(f"unknown latent noising form {form!r}; expected one of {NOISE_FORMS}")
    dtype = compute_dtype(z)
    s = _as_sigma(sigma, z, dtype)
    if noise is None:
        noise = randn(z.shape, generator=generator, device=z.device, dtype=dtype)
    if noise.shape != z.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} != latent shape {tuple(z.shape)}")
    if form == "flow":
        signal = 1 - s
    else:  # VP: sqrt(alpha_bar) = sqrt(1 - sigma_vp^2); clamp guards round-off at sigma -> 1
        signal = torch.sqrt(torch.clamp(1 - s * s, min=0.0))
    out = append_dims(signal, z.ndim) * z.to(dtype) + append_dims(s, z.ndim) * noise.to(dtype)
    return out.to(z.dtype)


def sample_latent_sigma(
    n: int,
    sigma_max: float = 0.8,
    p: float = 0.75,
    sigma_min: float = 0.0,
    generator: torch.Generator | None = None,
    device=None,
) -> Tensor:
    """Per-sample latent noise levels, float32 shape (n,).

    Each sample is noised with probability ``p``: σ ~ U(sigma_min, sigma_max); otherwise σ = 0.
    Two uniform draws per sample (apply, level), always in that order, so the stream of a
    seeded ``generator`` does not depend on the outcome.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    if not 0.0 <= sigma_min <= sigma_max <= 1.0:
        raise ValueError(f"need 0 <= sigma_min <= sigma_max <= 1, got {(sigma_min, sigma_max)}")
    apply = rand((n,), generator=generator, device=device) < p
    level = sigma_min + (sigma_max - sigma_min) * rand((n,), generator=generator, device=device)
    return torch.where(apply, level, torch.zeros_like(level))


def keep_mask(
    n: int,
    drop_prob: float,
    generator: torch.Generator | None = None,
    device=None,
) -> Tensor:
    """Bool mask (n,), True = keep the condition, False = drop it (for CFG training).

    PiD drops the caption and the latent independently with ``drop_prob = 0.1`` each.
    """
    if not 0.0 <= drop_prob <= 1.0:
        raise ValueError(f"drop_prob must be in [0, 1], got {drop_prob}")
    return rand((n,), generator=generator, device=device) >= drop_prob


def ve_to_vp(z_ve: Tensor, sigma_ve: Tensor | float) -> tuple[Tensor, Tensor | float]:
    r"""Euler/VE-frame state :math:`z + \sigma_{ve}\xi` → VP frame :math:`\sqrt{1-\sigma^2} z + \sigma\xi`.

    Both latent and σ are divided by :math:`\sqrt{\sigma_{ve}^2 + 1}`; returns ``(z_vp, sigma_vp)``.
    ``sigma_ve`` may be a float or a (B,) tensor (σ is returned in the same kind).
    """
    scale = (sigma_ve * sigma_ve + 1) ** 0.5
    dtype = compute_dtype(z_ve)
    z_vp = z_ve.to(dtype) / append_dims(torch.as_tensor(scale, device=z_ve.device, dtype=dtype), z_ve.ndim)
    return z_vp.to(z_ve.dtype), sigma_ve / scale


def vp_to_ve(z_vp: Tensor, sigma_vp: Tensor | float) -> tuple[Tensor, Tensor | float]:
    r"""Inverse of :func:`ve_to_vp`: :math:`\sigma_{ve} = \sigma / \sqrt{1 - \sigma^2}`, latent times
    :math:`\sqrt{\sigma_{ve}^2 + 1} = 1 / \sqrt{1 - \sigma^2}`. Requires σ < 1.
    """
    alpha = (1 - sigma_vp * sigma_vp) ** 0.5  # sqrt(alpha_bar)
    dtype = compute_dtype(z_vp)
    z_ve = z_vp.to(dtype) / append_dims(torch.as_tensor(alpha, device=z_vp.device, dtype=dtype), z_vp.ndim)
    return z_ve.to(z_vp.dtype), sigma_vp / alpha
