"""Metric functions on batches of images: fidelity (PSNR, SSIM, LPIPS), Inception features and the
distances built on them (FID/KID from features, patch-FID, the paired Inception feature distance).

Inputs follow the one convention of :mod:`pid.eval.images`: (B, 3, H, W), uint8 in [0, 255] or
floats in [-1, 1]; both forms give the same value, and floats outside [-1, 1] are refused.

- FID/KID: the whole image goes through the FID Inception, which resizes it to 299² (as
  torchmetrics does). KID is the unbiased polynomial-kernel MMD² (Bińkowski et al. 2018), averaged
  over ``subsets`` random subsets as torch-fidelity does, computed here in float64.
- patch-FID: crops at the *native* output resolution, so the Inception net sees the decoded detail
  a 4×/8× decoder adds instead of a 299-pixel thumbnail of the whole image.
- :func:`inception_feature_distance`: mean squared L2 distance between the Inception features of
  each prediction and *its own* ground truth. Unlike no-reference sharpness scores it rewards
  correct detail: added noise, a wrong texture and blur all move the features away.
- :func:`haarpsi`: the Haar wavelet-based perceptual similarity index (Reisenhofer et al. 2018), a
  full-reference index with no learned weights (piq's implementation).
- :func:`blockiness`: gradient energy across the borders of a ``patch``-pixel grid over that inside
  the patches; a patch-based network that draws visible patch seams scores above its ground truth.
"""

from __future__ import annotations

import math
import os
from typing import Literal

import torch
from torchmetrics import Metric as StreamingMetric

from pid.eval.frechet import frechet_distance
from pid.eval.images import as_metric_images, as_metric_pair, grid_patches
from pid.eval.inception import inception_feature_extractor

Reduction = Literal["mean", "none"]


#: The PSNR of 8-bit quantisation noise (MSE of a uniform error of one step, (2/255)²/12 on [-1, 1]):
#: 10·log10(12·255²) ≈ 58.9 dB. Images closer than that to their reference are identical at 8 bits, so
#: :func:`psnr` caps each image there instead of returning ``inf``.
PSNR_CAP_DB = 10.0 * math.log10(12 * 255**2)


def psnr(pred: torch.Tensor, gt: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, per image, computed in float64, capped at :data:`PSNR_CAP_DB`
    (identical images score the cap, never ``inf``; :func:`psnr_capped` counts them).

    ``reduction="mean"`` averages the per-image PSNRs. uint8 and [-1, 1] inputs may be mixed.
    """
    p, g = as_metric_pair(pred, gt, "double")
    mse = (p - g).square().flatten(1).mean(1)
    values = (10.0 * torch.log10(4.0 / mse)).clamp(max=PSNR_CAP_DB)  # peak-to-peak 2 in [-1, 1] (255 uint8)
    return values.mean() if reduction == "mean" else values


def psnr_capped(values: torch.Tensor) -> int:
    """How many per-image PSNRs of :func:`psnr` (``reduction="none"``) sit at the cap."""
    return int((values >= PSNR_CAP_DB - 1e-9).sum())


def ssim(pred: torch.Tensor, gt: torch.Tensor, reduction: Reduction = "mean"):
    """SSIM (Gaussian 11×11, σ 1.5, on RGB in [0, 1]) — torchmetrics' implementation: the mean as a float,
    or (B,) per image with ``reduction="none"``."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    p, g = as_metric_pair(pred, gt)
    if reduction == "none":
        return structural_similarity_index_measure((p + 1) / 2, (g + 1) / 2, data_range=1.0, reduction="none")
    return float(structural_similarity_index_measure((p + 1) / 2, (g + 1) / 2, data_range=1.0))


def haarpsi(pred: torch.Tensor, gt: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """HaarPSI in [0, 1] (1: identical), per image on RGB in [0, 1] — piq's implementation, no weights."""
    import piq

    p, g = as_metric_pair(pred, gt)
    values = piq.haarpsi(((p + 1) / 2).clamp(0, 1), ((g + 1) / 2).clamp(0, 1),
                         data_range=1.0, reduction="none")
    return values.mean() if reduction == "mean" else values


def blockiness_terms(images: torch.Tensor, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the mean squared luma gradient across the borders of a ``patch``-pixel grid and the mean
    inside the patches: two (B,) float64 tensors (every image of a batch has the same counts of each).

    Raises ValueError for ``patch`` < 2 or images not larger than it."""
    x = as_metric_images(images, "double")
    if patch < 2 or x.shape[-1] <= patch or x.shape[-2] <= patch:
        raise ValueError(f"blockiness needs patch >= 2 and images larger than it, got patch {patch} "
                         f"for {tuple(x.shape[-2:])}")
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    across = torch.zeros(len(x), dtype=torch.float64)
    inside = torch.zeros(len(x), dtype=torch.float64)
    n_across = n_inside = 0
    for d in (luma.diff(dim=-1), luma.diff(dim=-2).transpose(-1, -2)):  # d[..., j]: pixel j+1 minus pixel j
        border = (torch.arange(d.shape[-1]) + 1) % patch == 0
        e = d.square()
        across += e[..., border].flatten(1).sum(1)
        inside += e[..., ~border].flatten(1).sum(1)
        n_across += int(e[0][..., border].numel())
        n_inside += int(e[0][..., ~border].numel())
    return across / max(n_across, 1), inside / max(n_inside, 1)


def blockiness(images: torch.Tensor, patch: int) -> float:
    """Mean squared luma gradient across the borders of a ``patch``-pixel grid over the mean inside patches.

    Horizontal and vertical neighbour differences are pooled over the whole batch (a set-level ratio:
    flat crops do not dominate it). About 1 for natural images; above 1 when the grid shows. Compare it
    with the ground truth's (their ratio) to tell seams a decoder added from edges the content has.
    """
    across, inside = blockiness_terms(images, patch)
    return float(across.mean()) / max(float(inside.mean()), 1e-12)


class LPIPSNet:
    """LPIPS (AlexNet) with the linear heads that ship inside torchmetrics and a *local* backbone file.

    ``backbone_weights``: torchvision's ``alexnet-owt-7be5be79.pth`` state dict (nothing is
    downloaded at run time).
    """

    def __init__(self, backbone_weights: str):
        from torchmetrics.functional.image.lpips import _LPIPS

        self.model = _LPIPS(pretrained=True, net="alex", pnet_rand=True).eval()
        state = torch.load(str(backbone_weights), map_location="cpu", weights_only=True)
        own = self.model.net.state_dict()
        for key in own:  # "slice{k}.{i}.weight" ← torchvision "features.{i}.weight"
            _, idx, param = key.split(".")
            own[key] = state[f"features.{idx}.{param}"]
        self.model.net.load_state_dict(own)

    def to(self, device) -> LPIPSNet:
        self.model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, pred: torch.Tensor, gt: torch.Tensor) -> float:
        dev = next(self.model.parameters()).device
        p, g = as_metric_pair(pred, gt)
        return float(self.model(p.to(dev), g.to(dev)).mean())


@torch.no_grad()
def inception_features(images: torch.Tensor, extractor: torch.nn.Module | None = None,
                       batch_size: int = 32) -> torch.Tensor:
    """(B, 2048) FID Inception pool features (float64), computed on the device of ``images``."""
    extractor = extractor if extractor is not None else inception_feature_extractor()
    extractor = extractor.to(images.device)
    x = as_metric_images(images, "uint8")
    return torch.cat([extractor(x[i:i + batch_size]).double() for i in range(0, len(x), batch_size)])


def fid_from_features(f1: torch.Tensor, f2: torch.Tensor) -> float:
    """Fréchet distance (float64) between two (n, 2048) feature sets; NaN with fewer than 2 per set."""
    if len(f1) < 2 or len(f2) < 2:
        return float("nan")
    return float(frechet_distance(f1, f2))


def kid_from_features(f1: torch.Tensor, f2: torch.Tensor, subsets: int = 100, subset_size: int = 1000,
                      degree: int = 3, coef: float = 1.0, seed: int = 0) -> tuple[float, float]:
    """(mean, std) of the unbiased MMD² with kernel k(x, y) = (xᵀy / d + coef)^degree over subsets."""
    x, y = f1.double(), f2.double()
    n = min(len(x), len(y), subset_size)
    if n < 2:
        return float("nan"), float("nan")
    d = x.shape[1]
    if n == len(x) == len(y):
        subsets = 1  # every "subset" is the whole of both sets: the same MMD² each time
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        a = x[torch.randperm(len(x), generator=g)[:n]]
        b = y[torch.randperm(len(y), generator=g)[:n]]
        kxx = (a @ a.T / d + coef) ** degree
        kyy = (b @ b.T / d + coef) ** degree
        kxy = (a @ b.T / d + coef) ** degree
        mmd = ((kxx.sum() - kxx.diagonal().sum()) + (kyy.sum() - kyy.diagonal().sum())) / (n * (n - 1))
        values.append(float(mmd - 2 * kxy.mean()))
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(t) > 1 else 0.0


def inception_feature_distance(pred: torch.Tensor, gt: torch.Tensor, extractor: torch.nn.Module | None = None,
                               batch_size: int = 32, reduction: Reduction = "mean") -> torch.Tensor:
    """Mean over pairs of ‖f(pred_i) − f(gt_i)‖² with f the 2048-d FID Inception pool features.

    Images are resized to 299 × 299 bilinearly as torchmetrics' FID does; squared distances are
    accumulated in float64. 0 for identical images.
    """
    p, g = as_metric_pair(pred, gt, "uint8")
    extractor = extractor if extractor is not None else inception_feature_extractor()
    d = inception_features(p, extractor, batch_size) - inception_features(g, extractor, batch_size)
    values = d.square().sum(1)
    return values.mean() if reduction == "mean" else values


class InceptionFeatureDistance(StreamingMetric):
    """Streaming :func:`inception_feature_distance` for Lightning validation loops.

    The Inception network is held outside the module tree so it never lands in checkpoints; it
    follows the inputs' device.
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


def patch_fid(pred: torch.Tensor, gt: torch.Tensor, patch: int = 299,
              extractor: torch.nn.Module | None = None, batch_size: int = 32) -> float:
    """FID between the grids of ``patch``-pixel crops of ``pred`` and of ``gt``.

    Features are those of torchmetrics' FID (same network, same resizing); the distance is exact in
    float64 (:func:`pid.eval.frechet.frechet_distance`). Needs at least 2 crops per set; like any FID
    it is biased upwards for small sets, so compare at equal counts.
    """
    p, g = as_metric_images(pred, "uint8", "pred"), as_metric_images(gt, "uint8", "gt")
    extractor = extractor if extractor is not None else inception_feature_extractor()
    feats = [inception_features(grid_patches(x, patch), extractor, batch_size) for x in (p, g)]
    return float(frechet_distance(feats[0], feats[1]))
