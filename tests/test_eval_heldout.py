"""The held-out comparison printed after training: its measures (blockiness, HaarPSI) and its report at
σ = 0 and σ = 0.4 (table, verdict, JSON, grid PNG, HTML page), on a stand-in decoder (no training)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from pid.eval.functional import blockiness, haarpsi
from pid.eval.heldout import compare_on_heldout


def smooth_images(n: int = 4, size: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, size // 16, size // 16, generator=g) * 2 - 1
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


def test_blockiness_sees_a_patch_grid_and_not_smooth_content():
    smooth = smooth_images()
    # the same content, each 8x8 patch replaced by its mean: flat inside, steps on the 8-px grid
    blocky = F.interpolate(F.avg_pool2d(smooth, 8), scale_factor=8, mode="nearest")
    assert 0.7 < blockiness(smooth, 8) < 1.3
    assert blockiness(blocky, 8) > 20 * blockiness(smooth, 8)
    # the grid is that of the patch size asked for: 8-px blocks hardly register on a 7-px grid
    assert blockiness(blocky, 7) < blockiness(blocky, 8) / 3
    # uint8 and [-1, 1] give the same value; out-of-range floats are refused
    u8 = ((blocky + 1) * 127.5).round().to(torch.uint8)
    assert blockiness(u8, 8) == pytest.approx(blockiness(u8.float() / 127.5 - 1, 8))
    with pytest.raises(ValueError):
        blockiness(blocky * 3, 8)


def test_haarpsi_is_one_for_identical_images_and_lower_for_degraded_ones():
    x = smooth_images(size=64)
    noisy = (x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)
    assert float(haarpsi(x, x)) == pytest.approx(1.0, abs=1e-4)
    assert float(haarpsi(noisy, x)) < 0.9


class _Latent:
    """A 4x-down average-pool "latent" with a nearest-neighbour decode: blocky like a patch code."""
    down_factor = 4
    noise_form = "flow"

    def decode(self, z):
        return F.interpolate(z, scale_factor=4, mode="nearest")


class _Module(torch.nn.Module):
    """Stand-in for a trained PiD module: decodes the noisy latent smoothly (bicubic ×16)."""

    def __init__(self):
        super().__init__()
        self.latent = _Latent()
        self.sr_scale = 4
        self.net = torch.nn.Module()
        self.net.patch_size = 8
        self.sampling = {"num_steps": 2, "sampler": "euler"}
        self.seen_sigmas = []
        self.device = torch.device("cpu")

    def encode_lq(self, hq):
        lq = F.avg_pool2d(hq, 4)
        return lq, F.avg_pool2d(lq, 4)

    def decode(self, z, sigma, num_steps=None, generator=None):
        self.seen_sigmas.append(float(sigma))
        return F.interpolate(z, scale_factor=16, mode="bicubic", align_corners=False).clamp(-1, 1)


class _Features(torch.nn.Module):
    """Stand-in for the Inception extractor (uint8 batch → pooled colour features), to keep the test fast."""

    def forward(self, x):
        return F.adaptive_avg_pool2d(x.float() / 255, 4).flatten(1)


class _DataModule:
    def __init__(self, images):
        self.images = images

    def setup(self, stage):
        pass

    def val_dataloader(self):
        items = [{"image": img, "key": f"img{i // 2}@0,{i % 2}"} for i, img in enumerate(self.images)]
        return torch.utils.data.DataLoader(items, batch_size=3)


def test_compare_on_heldout_reports_both_sigmas_with_every_measure(tmp_path, capsys):
    truth = ((smooth_images(n=6, size=64, seed=3) + 1) * 127.5).round().to(torch.uint8)
    module = _Module()
    metrics = compare_on_heldout(module, _DataModule(truth), out_dir=tmp_path, sigmas=(0.0, 0.4),
                                 grid_crops=2, html_crops=2, extractor=_Features())
    assert module.seen_sigmas == [0.0, 0.0, 0.4, 0.4]  # two batches per level, PiD told the level
    for tag in ("s0", "s0.4"):
        for name in ("pid", "baseline"):
            for m in ("psnr", "ssim", "haarpsi", "inception_dist", "lr_psnr", "kid", "grain", "blockiness"):
                assert torch.isfinite(torch.tensor(metrics[f"heldout/{name}_{m}_{tag}"]))
    # the nearest-neighbour decode shows its 16-px blocks on the 8-px grid; the smooth decode does not
    assert metrics["heldout/baseline_blockiness_s0"] > 2.0
    assert metrics["heldout/pid_blockiness_s0"] < 1.3
    # the noisy latent hurts the baseline's structure
    assert metrics["heldout/baseline_ssim_s0.4"] < metrics["heldout/baseline_ssim_s0"]
    out = capsys.readouterr().out
    assert "6 crops from 3 images" in out and "σ = 0:" in out and "σ = 0.4:" in out
    assert out.count("-> PiD vs native decode + bicubic:") == 2
    # 6 crops are below the floor of every measure: nothing is named ahead, each says what it needs
    assert " ahead" not in out.replace("ahead on", "") and "not ranked with 6 crops" in out
    for family in ("fidelity to the input:", "realism:", "artefacts:"):
        assert out.count(family) == 2
    saved = json.loads((tmp_path / "heldout_comparison.json").read_text())
    assert saved["heldout/pid_haarpsi_s0.4"] == pytest.approx(metrics["heldout/pid_haarpsi_s0.4"])
    assert (tmp_path / "heldout_grid.png").is_file()
    page = (tmp_path / "heldout" / "compare.html").read_text()
    assert "σ = 0.4" in page and "ground truth" in page
