"""Paired detail measures: PSNR, Inception feature distance, patch-FID."""

import math

import pytest
import skimage.data as skd
import torch
import torch.nn.functional as F

from pid.eval import inception
from pid.eval.frechet import frechet_distance
from pid.eval.functional import inception_feature_distance, patch_fid, psnr
from pid.eval.images import as_metric_images, grid_patches


@pytest.fixture(scope="module")
def extractor(inception_weights):
    return inception.inception_feature_extractor(inception_weights)


@pytest.fixture(scope="module")
def crop() -> torch.Tensor:
    """A 64-px crop of a real photo (the astronaut's badge), floats in [-1, 1]."""
    x = torch.from_numpy(skd.astronaut()).permute(2, 0, 1)[None].contiguous()
    return grid_patches(x, 64)[[27]].float() / 127.5 - 1.0


def _noise(x: torch.Tensor, sigma: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(-1, 1)


def _blur(x: torch.Tensor, k: int) -> torch.Tensor:
    return F.avg_pool2d(F.pad(x, (k // 2,) * 4, mode="reflect"), k, stride=1)


def test_psnr_known_values():
    from pid.eval.functional import PSNR_CAP_DB

    gt = torch.zeros(2, 3, 8, 8)
    assert psnr(gt + 0.1, gt).item() == pytest.approx(10 * math.log10(4 / 0.01), abs=1e-5)  # 26.0206 dB
    a = torch.full((1, 3, 4, 4), 100, dtype=torch.uint8)
    assert psnr(a + 10, a).item() == pytest.approx(10 * math.log10(255**2 / 100), abs=1e-9)  # 28.1308 dB
    assert psnr(gt, gt).item() == pytest.approx(PSNR_CAP_DB)  # identical at 8 bits: the cap, never inf
    per_image = psnr(torch.stack([gt[0] + 0.1, gt[1] + 0.2]), gt, reduction="none")
    assert per_image.shape == (2,) and per_image[0] > per_image[1]
    # uint8 and [-1, 1] floats mix; floats outside [-1, 1] are refused, naming the range
    expected = 10 * math.log10(255**2 / 100)
    assert psnr(a + 10, a.double() / 127.5 - 1).item() == pytest.approx(expected, abs=1e-9)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        psnr(gt + 5.0, gt)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        psnr(a, a.float())


def test_as_metric_images_maps_range():
    x = torch.tensor([-1.0, 0.0, 1.0, 1.004]).view(1, 1, 1, 4).expand(1, 3, 1, 4)
    # 1.004 is within one step of 1: clamped
    assert as_metric_images(x, "uint8")[0, 0].flatten().tolist() == [0, 128, 255, 255]


def test_grid_patches():
    x = torch.arange(2 * 3 * 10 * 7).view(2, 3, 10, 7)
    p = grid_patches(x, 3)
    assert p.shape == (2 * 3 * 2, 3, 3, 3)
    assert torch.equal(p[1], x[0, :, 0:3, 3:6])


def test_feature_distance_zero_for_identical_grows_with_noise_and_blur(extractor, crop):
    degraded = [crop, _noise(crop, 0.05), _noise(crop, 0.2), _blur(crop, 3), _blur(crop, 7)]
    pred = torch.cat(degraded)
    gt = crop.expand_as(pred)
    d = inception_feature_distance(pred, gt, extractor, reduction="none")
    same, noise_lo, noise_hi, blur_lo, blur_hi = d.tolist()
    assert same == 0.0
    assert 0 < noise_lo < noise_hi
    assert 0 < blur_lo < blur_hi


class _PixelFeatures(torch.nn.Module):
    """Stand-in extractor: the uint8 pixels themselves as features (exercises the plumbing only)."""

    def forward(self, x):
        assert x.dtype == torch.uint8
        return x.flatten(1).float()


def test_feature_distance_reduction_and_precision():
    gt = torch.zeros(2, 3, 2, 2)
    pred = torch.stack([gt[0], gt[1] + 1.5 / 127.5])  # grey 128 → 129 on the second image (12 values)
    per_pair = inception_feature_distance(pred, gt, _PixelFeatures(), reduction="none")
    assert per_pair.dtype == torch.float64 and per_pair.tolist() == [0.0, 12.0]
    assert inception_feature_distance(pred, gt, _PixelFeatures()).item() == 6.0


def test_frechet_distance_matches_torchmetrics_formula():
    from torchmetrics.image.fid import _compute_fid

    g = torch.Generator().manual_seed(0)
    for n1, n2, d in ((5, 7, 16), (300, 200, 12)):  # low-rank (SVD) and full-rank (eigh) paths
        a = torch.randn(n1, d, generator=g, dtype=torch.float64)
        b = 1.3 * torch.randn(n2, d, generator=g, dtype=torch.float64) + 0.2
        ref = _compute_fid(a.mean(0), torch.cov(a.T), b.mean(0), torch.cov(b.T))
        assert frechet_distance(a, b).item() == pytest.approx(ref.item(), rel=1e-6)
    assert frechet_distance(a, a).abs().item() < 1e-9


def test_patch_fid_zero_for_identical_sets_and_grows_with_noise(extractor):
    x = torch.from_numpy(skd.astronaut()).permute(2, 0, 1)[None].contiguous()[..., 192:256, 192:320]
    noisy = as_metric_images(_noise(x.float() / 127.5 - 1, 0.3), "uint8")  # two 64-px crops each
    assert abs(patch_fid(x, x, patch=64, extractor=extractor)) < 1e-6
    assert patch_fid(noisy, x, patch=64, extractor=extractor) > 1.0


def test_streaming_metric_accumulates_over_batches(monkeypatch):
    from pid.eval import functional

    monkeypatch.setattr(functional, "inception_feature_extractor", lambda *_a, **_k: _PixelFeatures())
    metric = functional.InceptionFeatureDistance()
    gt = torch.zeros(2, 3, 2, 2)
    metric.update(gt, gt)
    metric.update(gt + 1.5 / 127.5, gt)
    assert metric.compute().item() == pytest.approx(6.0)
    assert not any(k.startswith("_extractor") for k in metric.state_dict())
