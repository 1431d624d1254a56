"""Quality measures on paired (prediction, ground-truth) crops, used by the quickstart.

- :func:`psnr`: pixel fidelity.
- :func:`inception_feature_distance`: mean squared L2 distance between the 2048-d
  Inception pool features of each prediction and *its own* ground truth. Unlike
  no-reference sharpness scores it rewards correct detail, not high-frequency
  energy: added noise, a wrong texture and blur all move the features away.
- :func:`patch_fid`: FID between sets of fixed native-resolution crops (SPEC §7),
  which keeps the detail a 4×/8× decoder adds visible to the Inception net;
  :func:`make_fid` builds torchmetrics' streaming FID with the same weights.

Image convention: either ``uint8`` in [0, 255] or floating point in [-1, 1]
(the project's convention), shape (B, 3, H, W).
"""

from __future__ import annotations

import os
from typing import Literal

import torch
from torchmetrics import Metric

from pid.eval.frechet import frechet_distance
from pid.eval.inception import inception_feature_extractor, inception_weights

Reduction = Literal["mean", "none"]


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 images unchanged; float images in [-1, 1] → rounded, clamped uint8 in [0, 255]."""
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise TypeError(f"images must be uint8 or floating point in [-1, 1], got {images.dtype}")
    return ((images.detach().float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def _check_pair(pred: torch.Tensor, gt: torch.Tensor) -> None:
    if pred.shape != gt.shape or pred.ndim != 4 or pred.shape[1] != 3:
        raise ValueError(
            f"expected two (B, 3, H, W) batches of equal shape, got {tuple(pred.shape)}, {tuple(gt.shape)}"
        )


def psnr(pred: torch.Tensor, gt: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, per image, computed in float64.

    Both inputs ``uint8`` (peak-to-peak range 255) or both floating point in [-1, 1]
    (range 2). Predictions are clamped to the valid range first. ``reduction="mean"``
    averages the per-image PSNRs; identical images give ``inf``.
    """
    _check_pair(pred, gt)
    if (pred.dtype == torch.uint8) != (gt.dtype == torch.uint8):
        raise TypeError("psnr: pass both images as uint8 or both as floats in [-1, 1]")
    if pred.dtype == torch.uint8:
        p, g, peak = pred.double(), gt.double(), 255.0
    else:
        p, g, peak = pred.double().clamp(-1.0, 1.0), gt.double(), 2.0
    mse = (p - g).square().flatten(1).mean(1)
    values = 10.0 * torch.log10(peak**2 / mse)
    return values.mean() if reduction == "mean" else values


@torch.no_grad()
def inception_features(
    images: torch.Tensor, extractor: torch.nn.Module | None = None, batch_size: int = 32
) -> torch.Tensor:
    """(B, 2048) Inception pool features (float64) of images (uint8 or [-1, 1] floats)."""
    extractor = extractor if extractor is not None else inception_feature_extractor()
    extractor = extractor.to(images.device)
    x = to_uint8(images)
    return torch.cat([extractor(x[i : i + batch_size]).double() for i in range(0, len(x), batch_size)])


def inception_feature_distance(
    pred: torch.Tensor,
    gt: torch.Tensor,
    extractor: torch.nn.Module | None = None,
    batch_size: int = 32,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Mean over pairs of ‖f(pred_i) − f(gt_i)‖² with f the 2048-d FID Inception pool features.

    Images (uint8 or [-1, 1] floats) are resized to 299 × 299 bilinearly as torchmetrics'
    FID does; squared distances are accumulated in float64. 0 for identical images.
    """
    _check_pair(pred, gt)
    extractor = extractor if extractor is not None else inception_feature_extractor()
    d = (inception_features(pred, extractor, batch_size) - inception_features(gt, extractor, batch_size))
    values = d.square().sum(1)
    return values.mean() if reduction == "mean" else values


class InceptionFeatureDistance(Metric):
    """Streaming :func:`inception_feature_distance` for Lightning validation loops.

    The Inception network is held outside the module tree so it never lands in
    checkpoints; it follows the inputs' device.
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, weights_path: str | os.PathLike | None = None, batch_size: int = 32, **kwargs):
        super().__init__(**kwargs)
        object.__setattr__(self, "_extractor", inception_feature_extractor(weights_path))
        self.batch_size = batch_size
        self.add_state("sum_sq", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, gt: torch.Tensor) -> None:
        values = inception_feature_distance(pred, gt, self._extractor, self.batch_size, reduction="none")
        self.sum_sq += values.sum().to(self.sum_sq.device)
        self.count += len(values)

    def compute(self) -> torch.Tensor:
        return self.sum_sq / self.count.clamp_min(1)


def grid_patches(images: torch.Tensor, patch: int) -> torch.Tensor:
    """Non-overlapping ``patch`` × ``patch`` crops on a grid anchored at the top-left (remainder dropped).

    Images smaller than ``patch`` on a side are returned whole.
    """
    h, w = images.shape[-2:]
    if h < patch or w < patch:
        return images
    rows, cols = h // patch, w // patch
    x = images[..., : rows * patch, : cols * patch]
    x = x.unfold(2, patch, patch).unfold(3, patch, patch)  # B, C, rows, cols, p, p
    return x.permute(0, 2, 3, 1, 4, 5).reshape(-1, images.shape[1], patch, patch)


def make_fid(weights_path: str | os.PathLike | None = None, **kwargs):
    """torchmetrics FrechetInceptionDistance (2048-d) with the offline standard Inception weights.

    For streaming use on a GPU (feed it uint8 images; ``normalize=False`` by default).
    Its final eigen-decomposition of a general 2048² matrix takes about a minute on a
    small CPU; :func:`patch_fid` gives the same value faster.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    kwargs.setdefault("feature", 2048)
    kwargs.setdefault("normalize", False)
    weights = str(inception_weights(weights_path))
    return FrechetInceptionDistance(feature_extractor_weights_path=weights, **kwargs)


def patch_fid(
    pred: torch.Tensor,
    gt: torch.Tensor,
    patch: int = 299,
    extractor: torch.nn.Module | None = None,
    batch_size: int = 32,
) -> float:
    """FID between the grids of ``patch``-pixel crops of ``pred`` and of ``gt`` (uint8 or [-1, 1]).

    Crops are taken at native resolution, so the Inception net sees the decoded detail
    instead of a 299-pixel thumbnail of the whole image. Features are those of
    torchmetrics' FID (same network, same resizing); the distance is computed exactly
    in float64 by :func:`pid.eval.frechet.frechet_distance`. Needs at least 2 crops per
    set; like any FID it is biased upwards for small sets, so compare at equal counts.
    """
    extractor = extractor if extractor is not None else inception_feature_extractor()
    feats = [inception_features(grid_patches(x, patch), extractor, batch_size) for x in (pred, gt)]
    return float(frechet_distance(feats[0], feats[1]))
