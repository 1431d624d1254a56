"""Guards before long work (pid.guard): one size rule for decode inputs, a cost estimate that matches what a
decode really does, and the decode CLI stopping over budget with the ways on."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from conftest import tiny_pid_net
from pid.guard import (Budget, PeakTensorMemory, check_crop_size, estimate_decode, plan_input_size,
                       size_unit)
from pid.utils.errors import PiDConfigError

GEOM = dict(latent_down=8, sr_scale=4, patch_size=16)


def test_size_unit_is_the_latent_grid_and_the_output_patch_grid():
    assert size_unit(8, 4, 16) == 8
    assert size_unit(8, 4, 8) == 8
    assert size_unit(16, 1, 32) == 32  # an output side must be a whole number of 32-px patches
    assert size_unit(8, 3, 16) == 16


def test_one_size_rule_with_and_without_size():
    page = plan_input_size((1651, 1275), **GEOM)
    assert page.input_hw == (1648, 1272) and page.output_hw == (6592, 5088) and page.rounded
    assert "rounded to 1648×1272" in page.describe()
    small = plan_input_size((37, 53), **GEOM)  # rounded, and said so
    assert small.input_hw == (40, 56) and small.rounded and "nearest multiple of 8" in small.describe()
    sized = plan_input_size((37, 53), size=(37, 53), **GEOM)  # the same size through --size: same rule
    assert sized.input_hw == small.input_hw and sized.rounded
    exact = plan_input_size((48, 64), **GEOM)
    assert not exact.rounded and exact.latent_hw == (6, 8)


@pytest.mark.parametrize("source, size, match", [
    ((5, 5), None, r"5×5 px .*smaller than one latent cell \(8 px\).*--size 8 8"),
    ((64, 64), (0, -8), r"--size 0 -8: give two positive whole numbers"),
    ((64, 64), (64, 2.5), "positive whole numbers"),
])
def test_impossible_sizes_are_clear_errors(source, size, match):
    with pytest.raises(PiDConfigError, match=match):
        plan_input_size(source, size=size, **GEOM)


def test_a_tiny_image_can_be_upscaled_on_purpose():
    assert plan_input_size((5, 5), size=(8, 8), **GEOM).output_hw == (32, 32)


def test_eval_crop_sizes_follow_the_same_rule():
    assert check_crop_size(128, **GEOM) == 128
    with pytest.raises(PiDConfigError, match=r"data.crop_size=100 must be a positive multiple of 32.*=96"):
        check_crop_size(100, **GEOM)
    with pytest.raises(PiDConfigError, match="crop_size=0"):
        check_crop_size(0, **GEOM)


def test_peak_tensor_memory_follows_allocations_and_frees():
    with PeakTensorMemory() as mem:
        a = torch.ones(1000, 1000)
        b = a * 2
        del b
        c = a + 1
        c.view(-1)
    assert mem.peak == 2 * 4 * 10**6


@pytest.fixture(scope="module")
def net():
    return tiny_pid_net("v1", latent_channels=4)


@pytest.mark.parametrize("tile", [None, 64])
def test_the_shape_only_estimate_is_what_a_real_step_does(net, tile):
    """FLOPs and peak tensor memory estimated on meta tensors (one step, and the state steps carry) equal
    those of a real 3-step decode measured with the same counters; the estimate runs no arithmetic."""
    from torch.utils.flop_counter import FlopCounterMode

    from pid.guard import _FusedAttention
    from pid.sampling import decode_latent

    kw = dict(sr_scale=4, latent_down=8, sampler="euler", latent_cfg=2.0)
    est = estimate_decode(net, (1, 4, 4, 6), num_steps=3, tile=tile, probe=False, **kw)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter, PeakTensorMemory() as mem, _FusedAttention() as attn:
        decode_latent(net, torch.randn(1, 4, 4, 6), 0.0, num_steps=3, tile=tile, **kw)
    assert est.forwards == 3 and est.output_hw == (128, 192)
    assert est.flops == pytest.approx(counter.get_total_flops() + attn.flops, rel=1e-6)
    assert est.peak_bytes == pytest.approx(mem.peak, rel=1e-3)  # but a few real-only scalars
    assert (est.tile is not None) == (tile is not None)


def test_tiling_bounds_the_estimated_memory(net):
    kw = dict(sr_scale=4, latent_down=8, sampler="euler", num_steps=1, probe=False)
    whole = [estimate_decode(net, (1, 4, s, s), **kw).peak_bytes for s in (4, 8, 16)]
    tiled = [estimate_decode(net, (1, 4, s, s), tile=64, **kw).peak_bytes for s in (4, 8, 16)]
    assert whole[2] > 10 * whole[0]
    assert tiled[2] < whole[2] / 4


def test_a_cpu_estimate_has_a_measured_time(net):
    est = estimate_decode(net, (1, 4, 2, 2), sr_scale=4, latent_down=8, sampler="heun", num_steps=3)
    assert est.forwards == 5 and est.seconds > 0 and est.flop_rate > 0 and "measured" in est.describe()


# ------------------------------------------------------------------------------------- the decode CLI


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    from test_latents_vae import tiny_release_vae
    from test_official_release import OFFICIAL, tiny_preset

    tmp = tmp_path_factory.mktemp("release")
    tiny_release_vae("flux1").save_pretrained(tmp / "vae")
    preset = str(tiny_preset(tmp, "v1_5_student", "flux1"))
    return ["--release", preset, "--ckpt", str(OFFICIAL / "tiny" / "v1_5_student_release.pth"),
            "--latent-path", str(tmp / "vae"), "--device", "cpu"]


def _image(path, hw):
    import skimage.data
    from PIL import Image

    Image.fromarray(skimage.data.astronaut()).resize((hw[1], hw[0])).save(path)
    return str(path)


def test_a_page_sized_image_stops_before_decoding_with_the_ways_on(release, tmp_path):
    from pid.decode import main
    from pid.guard import OverBudgetError

    page = _image(tmp_path / "page.png", (1651, 1275))
    with pytest.raises(OverBudgetError) as err:
        main([*release, "--image", page, "--out", str(tmp_path / "out.png")])
    text = str(err.value)
    assert "6592×5088 px" in text and "over budget" in text
    for way in ("--size ", "a smaller image", "--force"):
        assert way in text
    assert not (tmp_path / "out.png").exists()
    assert err.value.estimate.seconds > 300


def test_small_images_are_rounded_and_said_so_with_or_without_size(release, tmp_path, caplog):
    from PIL import Image

    from pid.decode import main

    small = _image(tmp_path / "small.png", (37, 53))
    with caplog.at_level(logging.INFO, logger="pid"):
        (a,) = main([*release, "--image", small, "--out", str(tmp_path / "a.png")])
        (b,) = main([*release, "--image", small, "--size", "37", "53", "--out", str(tmp_path / "b.png")])
    assert np.asarray(Image.open(a)).shape == np.asarray(Image.open(b)).shape == (160, 224, 3)
    assert caplog.text.count("rounded to 40×56 px") == 2


@pytest.mark.parametrize("hw, extra, match", [
    ((5, 5), [], "smaller than one latent cell"),
    ((64, 64), ["--size", "0", "-8"], "--size 0 -8: give two positive whole numbers"),
])
def test_impossible_sizes_stop_the_cli_with_a_clear_error(release, tmp_path, hw, extra, match):
    from pid.decode import main

    with pytest.raises(PiDConfigError, match=match):
        main([*release, "--image", _image(tmp_path / "x.png", hw), *extra, "--out", str(tmp_path / "o.png")])


def test_force_goes_ahead_over_budget(release, tmp_path):
    from pid.decode import main
    from pid.guard import OverBudgetError

    img = _image(tmp_path / "x.png", (48, 64))
    args = [*release, "--image", img, "--time-budget", "1e-6", "--out", str(tmp_path / "o.png")]
    with pytest.raises(OverBudgetError, match="--time-budget S"):
        main(args)
    (out,) = main([*args, "--force"])
    assert out.exists()


def test_budget_defaults_to_the_available_memory(net):
    from pid.guard import over_budget

    est = estimate_decode(net, (1, 4, 2, 2), sr_scale=4, latent_down=8, sampler="euler", num_steps=1,
                          probe=False)
    assert over_budget(est, Budget(seconds=None)) == []
    assert over_budget(est, Budget(seconds=None, memory_bytes=1))[0].startswith("memory")


def test_the_cli_decodes_in_tiles(release, tmp_path):
    from PIL import Image

    from pid.decode import main

    img = _image(tmp_path / "x.png", (48, 64))  # output 192 × 256 px, 16-px patches
    (whole,) = main([*release, "--image", img, "--out", str(tmp_path / "whole.png")])
    (tiled,) = main([*release, "--image", img, "--tile", "128", "--tile-overlap", "32", "--out",
                     str(tmp_path / "tiled.png")])
    a, b = np.asarray(Image.open(whole)), np.asarray(Image.open(tiled))
    assert a.shape == b.shape == (192, 256, 3) and not np.array_equal(a, b)
    with pytest.raises(ValueError, match="tile=100 is not a positive multiple of the network.s patch size"):
        main([*release, "--image", img, "--tile", "100", "--out", str(tmp_path / "bad.png")])


def test_make_eval_stops_when_one_batch_does_not_fit(net):
    from pid.api import PiDDecoder
    from pid.eval.inputs import guard_eval_decode
    from pid.guard import OverBudgetError
    from pid.latents.geometry import LatentGeometry

    decoder = PiDDecoder(net, LatentGeometry(channels=4, down_factor=8), sr_scale=4,
                         sampling={"sampler": "euler", "num_steps": 2})
    guard_eval_decode(decoder, (2, 4, 4, 4))  # 128² crops fit this machine
    with pytest.raises(OverBudgetError, match=r"data.batch_size \(now 2.*data.crop_size"):
        guard_eval_decode(decoder, (2, 4, 4, 4), Budget(seconds=None, memory_bytes=1e6))


def test_over_budget_the_ways_on_take_a_few_estimates(net, monkeypatch):
    """Over budget, the size that fits is solved from the estimate's cost curve and checked by one estimate
    (one more if it is over), and the tile by one tiled estimate (halved once): no bisection of estimates,
    each of which runs the decode path on meta tensors."""
    import pid.guard as guard
    from pid.api import PiDDecoder
    from pid.latents.geometry import LatentGeometry

    decoder = PiDDecoder(net, LatentGeometry(channels=4, down_factor=8), sr_scale=4,
                         sampling={"sampler": "euler", "num_steps": 3})
    shape = (1, 4, 24, 16)
    whole = guard.estimate_for_decoder(decoder, shape)
    budget = Budget(seconds=whole.seconds / 40, memory_bytes=whole.weight_bytes + whole.peak_bytes / 3)
    calls = []
    real = guard.estimate_decode

    def counting(*args, **kw):
        calls.append(kw.get("tile"))
        return real(*args, **kw)

    monkeypatch.setattr(guard, "estimate_decode", counting)
    res = guard.guard_decode(decoder, shape, budget)
    assert {r.split(":")[0] for r in res.reasons} == {"time", "memory"}
    assert calls[0] is None and len(calls) <= 5, calls  # the decode, ≤ 2 for the size, ≤ 2 for the tile
    assert res.fit_latent_hw is not None and not guard.over_budget(res.fit_estimate, budget)
    h, w = res.fit_latent_hw
    assert h < 24 and w < 16 and h >= w  # the same aspect, but for whole cells
    # about the largest: a grid a third larger per side is over the budget
    rates = (res.estimate.flop_rate, res.estimate.attention_rate, res.estimate.probe)
    bigger = real(net, (1, 4, h * 4 // 3 + 1, w * 4 // 3 + 1), sr_scale=4, latent_down=8, num_steps=3,
                  sampler="euler", rates=rates, exact=False)
    assert guard.over_budget(bigger, budget)
    if res.fit_tile is not None:
        memory = Budget(None, budget.memory_bytes)
        assert res.fit_tile in calls and not guard.over_budget(res.fit_tile_estimate, memory)


def test_the_fitting_scale_solves_the_cost_curve():
    from pid.guard import DecodeEstimate, fit_scale

    est = DecodeEstimate((1024, 1024), 1, 10, flops=3e12, peak_bytes=10**9, weight_bytes=10**7, device="cpu",
                         attention_flops=1e12).timed(1e10, 1e10, "test")  # 200 s + 100 s of attention
    s = fit_scale(est, Budget(seconds=30, memory_bytes=1e12))
    assert 200 * s**2 + 100 * s**4 == pytest.approx(30)
    s = fit_scale(est, Budget(seconds=None, memory_bytes=10**7 + 2.5e8))
    assert s == pytest.approx(0.5)
