"""Set and paired metrics of `make eval`: FID/KID on resized images, patch-FID on seeded native crops,
PSNR/SSIM and LPIPS (when its backbone weights are given).

Images: float (B, 3, H, W) in [-1, 1] (the project's convention) or uint8.

- FID/KID "resized": the whole image goes through the FID Inception, which resizes it to 299² (as
  torchmetrics does). KID is the unbiased polynomial-kernel MMD² (Bińkowski et al. 2018), averaged
  over ``subsets`` random subsets as torch-fidelity does, computed here in float64.
- patch-FID: crops of ``patch`` pixels at the *native* output resolution, at positions drawn once
  from a seeded generator (:func:`crop_positions`) and used identically for the reference and every
  method, so the Inception net sees the decoded detail (SPEC §7).
"""

from __future__ import annotations

import torch

from pid.eval.detail import inception_features, psnr, to_uint8
from pid.eval.frechet import frechet_distance

__all__ = ["crop_positions", "take_crops", "fid_from_features", "kid_from_features", "ssim", "psnr",
           "LPIPSMetric", "inception_features", "group_masks"]


def crop_positions(height: int, width: int, patch: int, per_image: int, num_images: int,
                   seed: int = 0) -> list[list[tuple[int, int]]]:
    """Per image, ``per_image`` (y, x) corners of ``patch``² crops, uniform and reproducible for a seed.

    The positions depend only on (size, patch, per_image, num_images, seed): the same pixels are cut
    from the reference and from every method. Images smaller than the patch give the whole image.
    """
    g = torch.Generator().manual_seed(int(seed))
    out = []
    for _ in range(num_images):
        if height < patch or width < patch:
            out.append([(0, 0)])
            continue
        ys = torch.randint(0, height - patch + 1, (per_image,), generator=g).tolist()
        xs = torch.randint(0, width - patch + 1, (per_image,), generator=g).tolist()
        out.append(list(zip(ys, xs)))
    return out


def take_crops(images: torch.Tensor, positions: list[list[tuple[int, int]]], patch: int) -> torch.Tensor:
    """Stack the crops at ``positions`` (from :func:`crop_positions`) of each image."""
    crops = []
    for img, pos in zip(images, positions):
        p_h, p_w = min(patch, img.shape[-2]), min(patch, img.shape[-1])
        crops += [img[:, y:y + p_h, x:x + p_w] for (y, x) in pos]
    return torch.stack(crops)


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


def _unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats or uint8 → float32 in [0, 1]."""
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    return images.float().clamp(-1, 1).add(1).div(2)


def ssim(pred: torch.Tensor, gt: torch.Tensor) -> float:
    """Mean SSIM (Gaussian 11×11, σ 1.5, on RGB in [0, 1]) — torchmetrics' implementation."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return float(structural_similarity_index_measure(_unit(pred), _unit(gt), data_range=1.0))


class LPIPSMetric:
    """LPIPS (AlexNet) with the linear heads that ship inside torchmetrics and a *local* backbone file.

    ``backbone_weights``: torchvision's ``alexnet-owt-7be5be79.pth`` state dict (no download at run
    time). Without it LPIPS is reported as 'not configured'.
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

    @torch.no_grad()
    def __call__(self, pred: torch.Tensor, gt: torch.Tensor) -> float:
        dev = next(self.model.parameters()).device
        p = _unit(pred).to(dev) * 2 - 1
        g = _unit(gt).to(dev) * 2 - 1
        return float(self.model(p, g).mean())


def uint8(images: torch.Tensor) -> torch.Tensor:
    return to_uint8(images)


def group_masks(keys: list[str], patterns: dict[str, str] | None) -> dict[str, torch.Tensor]:
    """Boolean masks over the evaluation set per named group (``fnmatch`` on the crop key, whose part
    before ``@`` is the file stem), plus ``other`` for the crops no pattern matches; empty groups are left out.
    A crop matching several patterns goes to the first."""
    from fnmatch import fnmatch

    stems = [k.split("@")[0] for k in keys]
    taken = torch.zeros(len(keys), dtype=torch.bool)
    out = {}
    for name, pattern in (patterns or {}).items():
        mask = torch.tensor([fnmatch(s, str(pattern)) for s in stems], dtype=torch.bool) & ~taken
        taken |= mask
        if mask.any():
            out[str(name)] = mask
    if out and (~taken).any():
        out["other"] = ~taken
    return out
