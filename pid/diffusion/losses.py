r"""Training losses of the teacher, computed in float32 (or wider).

* :func:`flow_matching_loss`: :math:`\lVert v_\theta(x_t, t) - (\varepsilon - x_0) \rVert^2`.
* :func:`ycbcr_charbonnier` / :func:`aux_rgb_loss`: PiD v1.5's auxiliary head that
  reconstructs the low-res RGB image from adapter features, against colour drift. A Charbonnier
  penalty :math:`\sqrt{d^2 + \epsilon^2} - \epsilon` in YCbCr (luma down-weighted 0.25, chroma 1),
  per-sample weighted by :math:`(1 - \sigma)` (a heavily noised latent cannot be expected to
  carry the colours), total weight 0.8.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._util import compute_dtype

__all__ = [
    "flow_matching_loss", "rgb_to_ycbcr", "ycbcr_charbonnier", "aux_rgb_loss", "latent_consistency_loss",
]

_REDUCTIONS = ("mean", "sum", "none", "per_sample")


def _reduce(err: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return err.mean()
    if reduction == "sum":
        return err.sum()
    if reduction == "none":
        return err
    if reduction == "per_sample":
        return err.flatten(1).mean(dim=1)
    raise ValueError(f"unknown reduction {reduction!r}; expected one of {_REDUCTIONS}")


def flow_matching_loss(v_pred: Tensor, v_target: Tensor, reduction: str = "mean") -> Tensor:
    """Squared error between predicted and target velocity, in fp32.

    ``reduction``: ``"mean"`` (scalar, the training loss), ``"sum"``, ``"none"`` (elementwise),
    ``"per_sample"`` (mean over all but the batch dim, shape (B,)).
    """
    if v_pred.shape != v_target.shape:
        raise ValueError(f"shape mismatch: {tuple(v_pred.shape)} vs {tuple(v_target.shape)}")
    dtype = compute_dtype(v_pred, v_target)
    err = (v_pred.to(dtype) - v_target.to(dtype)).square()
    return _reduce(err, reduction)


def rgb_to_ycbcr(rgb01: Tensor) -> Tensor:
    """ITU-R BT.601 RGB → (Y, Cb, Cr) without offsets, for (B, 3, H, W) in [0, 1]."""
    r, g, b = rgb01[:, 0:1], rgb01[:, 1:2], rgb01[:, 2:3]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b
    return torch.cat([y, cb, cr], dim=1)


def ycbcr_charbonnier(
    pred_rgb: Tensor,
    target_rgb: Tensor,
    eps: float = 1e-3,
    y_weight: float = 0.25,
    chroma_weight: float = 1.0,
) -> Tensor:
    r"""Per-sample (B,) Charbonnier distance in YCbCr between two RGB images in [-1, 1].

    :math:`\operatorname{mean}_{c,h,w}\big(\sqrt{(w_c (P_c - T_c))^2 + \epsilon^2} - \epsilon\big)`
    with :math:`w = (w_Y, w_{C}, w_{C})`. Zero iff the images are equal.
    """
    if pred_rgb.shape != target_rgb.shape or pred_rgb.shape[1] != 3:
        shapes = f"{tuple(pred_rgb.shape)}, {tuple(target_rgb.shape)}"
        raise ValueError(f"expected two (B, 3, H, W) images, got {shapes}")
    dtype = compute_dtype(pred_rgb, target_rgb)
    p = rgb_to_ycbcr((pred_rgb.to(dtype) + 1) * 0.5)
    q = rgb_to_ycbcr((target_rgb.to(dtype) + 1) * 0.5)
    w = p.new_tensor([y_weight, chroma_weight, chroma_weight]).view(1, 3, 1, 1)
    d = (p - q) * w
    return (torch.sqrt(d * d + eps * eps) - eps).flatten(1).mean(dim=1)


def aux_rgb_loss(
    pred: Tensor,
    target: Tensor,
    sigma: Tensor | float | None,
    weight: float = 0.8,
    keep: Tensor | None = None,
    eps: float = 1e-3,
    y_weight: float = 0.25,
    chroma_weight: float = 1.0,
    sigma_power: float = 1.0,
    normalize: bool = True,
) -> Tensor:
    r"""Auxiliary low-res RGB loss: ``weight · Σ_i w_i ℓ_i / N`` with :math:`w_i = k_i (1 - \sigma_i)^p`.

    Args:
        pred: (B, 3, h, w) RGB predicted by the adapter's aux head, in [-1, 1].
        target: (B, 3, H, W) low-res RGB the latent was encoded from, in [-1, 1]; area-resized to
            ``pred``'s size when they differ, then clamped. A sample whose target is all zero has weight 0.
        sigma: latent noise level per sample ((B,) or scalar; None = 0).
        keep: optional (B,) bool, False where the latent was dropped for CFG (no target then).
        normalize: True (PiD) divides by :math:`N = \max(\sum_i w_i, 10^{-6})` — a weighted mean;
            False divides by B, so the (1 − σ) factor scales the loss absolutely.

    ℓ_i is :func:`ycbcr_charbonnier`. The loss is 0 when σ = 1 for every sample.
    """
    dtype = compute_dtype(pred, target)
    pred = pred.to(dtype)
    target = target.to(device=pred.device, dtype=dtype)
    if target.shape[-2:] != pred.shape[-2:]:
        target = F.interpolate(target, size=pred.shape[-2:], mode="area")
    target = target.clamp(-1, 1)  # after the resize, as the official loss
    per_sample = ycbcr_charbonnier(pred, target, eps=eps, y_weight=y_weight, chroma_weight=chroma_weight)

    b = pred.shape[0]
    # a sample without a target (all-zero low-res image) carries no weight, as in the official loss
    w = (target.abs().flatten(1).mean(1) > 1e-6).to(dtype)
    if sigma is not None:
        s = torch.as_tensor(sigma, device=pred.device, dtype=dtype).reshape(-1).expand(b)
        w = w * (1 - s).clamp_min(0).pow(sigma_power)
    if keep is not None:
        w = w * keep.to(device=pred.device, dtype=dtype).reshape(b)
    denom = w.sum().clamp_min(1e-6) if normalize else torch.tensor(float(b), device=pred.device, dtype=dtype)
    return weight * (per_sample * w).sum() / denom


def latent_consistency_loss(x0_pred: Tensor, hq: Tensor, pool: int, sigma: Tensor | None = None,
                            keep: Tensor | None = None) -> Tensor:
    r"""What the latent fixes, held fixed.

    .. math:: \sum_i w_i \operatorname{mean}(P_k \hat x_{0,i} - P_k x_i)^2 / \sum_i w_i

    :math:`P_k` is a k×k average pool, :math:`\hat x_0` a network's clean-image estimate (a DMD2
    student's sample, or a teacher's :math:`x_t - t\,\hat v`), :math:`x` the real image, and
    :math:`w_i = (1 - \sigma_i)\,\mathrm{keep}_i` (a noisier latent fixes less; a dropped latent, nothing).
    A clean latent determines the image's local means (its latent cells, and below them what the
    encoder kept), so the term agrees with the conditional distribution the flow and distribution-
    matching losses target; it gives the colours and low frequencies a direct signal, which a
    network trained briefly from scratch otherwise gets only roughly right. Not part of the paper's
    recipe (weight 0 there).
    """
    if x0_pred.shape != hq.shape:
        raise ValueError(f"shape mismatch: {tuple(x0_pred.shape)} vs {tuple(hq.shape)}")
    if pool < 1 or x0_pred.shape[-1] % pool or x0_pred.shape[-2] % pool:
        raise ValueError(f"pool={pool} must be >= 1 and divide the image size {tuple(x0_pred.shape[-2:])}")
    dtype = compute_dtype(x0_pred, hq)
    diff = F.avg_pool2d(x0_pred.to(dtype), pool) - F.avg_pool2d(hq.detach().to(dtype), pool)
    per_sample = diff.pow(2).flatten(1).mean(1)
    w = torch.ones_like(per_sample)
    if sigma is not None:
        w = w * (1.0 - sigma.to(dtype).reshape(-1)).clamp_min(0.0)
    if keep is not None:
        w = w * keep.to(dtype).reshape(-1)
    return (w * per_sample).sum() / w.sum().clamp_min(1e-6)
