"""Eval metrics: FID/KID of feature sets, seeded patch crops, SSIM, latency probe, Lanczos cascade."""

import pytest
import skimage.data as skd
import torch
import torch.nn.functional as F

from pid.eval import inception
from pid.eval.functional import fid_from_features, inception_features, kid_from_features, ssim
from pid.eval.images import crop_positions, take_crops
from pid.eval.latency import measure


@pytest.fixture(scope="module")
def extractor(inception_weights):
    return inception.inception_feature_extractor(inception_weights)


def _photo_crops(n: int = 12, size: int = 48) -> torch.Tensor:
    """n different 48-px crops of a real photo, floats in [-1, 1]."""
    x = torch.from_numpy(skd.astronaut()).permute(2, 0, 1)[None].float().div(127.5).sub(1)
    x = F.interpolate(x, size=(256, 256), mode="bilinear", antialias=True)
    pos = crop_positions(256, 256, size, n, 1, seed=3)[0]
    return take_crops(x, [pos], size)


def test_fid_of_a_set_with_itself_is_zero_and_rises_with_noise(extractor):
    imgs = _photo_crops(8)
    f0 = inception_features(imgs, extractor)
    assert abs(fid_from_features(f0, f0)) < 1e-6
    g = torch.Generator().manual_seed(0)
    feats = []
    for std in (0.1, 0.4):
        noisy = (imgs + std * torch.randn(imgs.shape, generator=g)).clamp(-1, 1)
        feats.append(inception_features(noisy, extractor))
    fids = [fid_from_features(f, f0) for f in feats]
    assert 0 < fids[0] < fids[1], fids
    kid_same, _ = kid_from_features(f0, f0, subsets=5)
    kid_noisy, _ = kid_from_features(feats[1], f0, subsets=5)
    assert kid_noisy > kid_same + 1e-3


def test_patch_positions_are_deterministic_for_a_seed():
    a = crop_positions(100, 80, 32, 5, 3, seed=7)
    assert a == crop_positions(100, 80, 32, 5, 3, seed=7)
    assert a != crop_positions(100, 80, 32, 5, 3, seed=8)
    assert all(0 <= y <= 68 and 0 <= x <= 48 for img in a for (y, x) in img)
    crops = take_crops(torch.randn(3, 3, 100, 80), a, 32)
    assert crops.shape == (15, 3, 32, 32)
    assert crop_positions(16, 16, 32, 4, 2) == [[(0, 0)], [(0, 0)]]  # smaller than the patch: whole image


def test_ssim_identity_and_noise():
    x = _photo_crops(2)
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-5)
    assert ssim((x + 0.3 * torch.randn_like(x)).clamp(-1, 1), x) < 0.8


def test_latency_probe_reports_median_spread_and_memory():
    calls = []
    t = measure(lambda: calls.append(torch.ones(256, 256).sum()), "cpu", warmup=2, runs=5)
    assert len(calls) == 7 and t.runs == 5
    assert 0 <= t.min_ms <= t.p10_ms <= t.median_ms <= t.p90_ms <= t.max_ms
    assert t.mem_kind == "process_peak_rss" and t.peak_mem_mb > 10


def test_lanczos_cascade_upsamples_and_keeps_flat_images():
    from pid.eval.baselines import lanczos_upsample

    flat = torch.full((2, 3, 8, 6), 0.2)
    out = lanczos_upsample(flat, 4)
    assert out.shape == (2, 3, 32, 24)
    assert (out - 0.2).abs().max() < 1 / 127.5 + 1e-6


def test_kid_equals_torchmetrics_polynomial_mmd_on_the_whole_set():
    from torchmetrics.image.kid import poly_mmd

    g = torch.Generator().manual_seed(0)
    a = torch.randn(40, 16, generator=g, dtype=torch.float64)
    b = torch.randn(40, 16, generator=g, dtype=torch.float64) + 0.3
    ours, spread = kid_from_features(a, b, subsets=1, subset_size=40)
    assert ours == pytest.approx(float(poly_mmd(a, b)), rel=1e-12) and spread == 0.0


def test_group_masks_match_file_stems_first_pattern_wins_and_collect_the_rest():
    from pid.eval.inputs import group_masks

    keys = ["pdf_manual_p3@0,64", "skimage_coffee@32,0", "pdf_nettle_p7@0,0", "photo_pdf_like@0,0"]
    masks = group_masks(keys, {"text_pages": "pdf_*", "also_pdf": "pdf_nettle*", "none": "zzz*"})
    assert list(masks) == ["text_pages", "other"]
    assert masks["text_pages"].tolist() == [True, False, True, False]
    assert masks["other"].tolist() == [False, True, False, True]
    assert group_masks(keys, {}) == {} and group_masks(keys, {"none": "zzz*"}) == {}
