"""The one verdict rule (pid/eval/verdict.py), its measures (pid/eval/panel.py) and representative samples
(pid/eval/sample.py): paired bootstrap intervals, sample floors, the grain check on real images at the
quickstart's and `eval=quickstart`'s sizes, capped PSNR, draws across groups."""

from __future__ import annotations

import math

import numpy as np
import pytest
import skimage.data as skd
import torch

from pid.eval.functional import (PSNR_CAP_DB, blockiness, blockiness_terms, kid_from_features, psnr,
                                 psnr_capped)
from pid.eval.panel import _fid_stat, _kid_stat
from pid.eval.sample import count_line, representative_indices
from pid.eval.verdict import EXCLUDED, Evidence, Measure, compare, family_lines, judge

HIGHER = Measure("m", "M", "fidelity", "higher")


def _paired(n: int, gain: float, noise: float, seed: int = 0) -> tuple[Evidence, Evidence]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, generator=g, dtype=torch.float64) * 3 + 20  # crops differ a lot ...
    diff = gain + noise * torch.randn(n, generator=g, dtype=torch.float64)  # ... the pairs a little
    return Evidence(n, base + diff), Evidence(n, base)


def test_a_clear_paired_difference_names_a_winner_with_its_interval():
    a, b = _paired(30, gain=0.5, noise=0.3)
    out = compare(HIGHER, a, b, ("A", "B"))
    assert out.status == "ahead" and out.winner == "A"
    lo, hi = out.interval
    assert 0 < lo < 0.5 < hi
    assert "A ahead" in out.text() and "95 % interval" in out.text() and "30 crops" in out.text()
    # the same data the other way round names the other decoder; lower-is-better flips the sign
    assert compare(HIGHER, b, a, ("B", "A")).winner == "A"
    assert compare(Measure("m", "M", "fidelity", "lower"), a, b, ("A", "B")).winner == "B"
    # seeded: the same interval twice
    once, again = (compare(HIGHER, a, b, ("A", "B"), seed=3) for _ in range(2))
    assert once.interval == again.interval


def test_an_unclear_difference_is_not_separable_and_says_how_many_crops_it_needs():
    a, b = _paired(30, gain=0.05, noise=1.0)
    out = compare(HIGHER, a, b, ("A", "B"))
    assert out.status == "not separable" and out.winner is None
    assert out.need > 30 and f"need about {out.need:,} crops" in out.text()
    # with enough crops (4× (1.96 σ / gain)² here) the same effect separates
    a2, b2 = _paired(6000, gain=0.05, noise=1.0, seed=1)
    assert compare(HIGHER, a2, b2, ("A", "B")).winner == "A"


def test_below_the_floor_nothing_is_ranked_and_fid_never_ranks_on_small_sets():
    a, b = _paired(6, gain=5.0, noise=0.1)
    out = compare(HIGHER, a, b, ("A", "B"))
    assert out.status == "below floor" and out.winner is None and "needs 10" in out.text()
    fid = Measure("fid", "FID", "realism", "lower", min_samples=10_000, floor_reason="biased")
    feats = torch.randn(40, 8, dtype=torch.float64)
    ev = Evidence(40, stat=_fid_stat(feats, feats + 1, torch.arange(40)))
    out = compare(fid, Evidence(40, stat=_fid_stat(feats, feats, torch.arange(40))), ev, ("A", "B"))
    assert out.status == "below floor" and "biased" in out.text()


def test_an_excluded_measure_is_shown_but_never_names_a_winner():
    a, b = _paired(30, gain=2.0, noise=0.1)
    out = compare(HIGHER, a, b, ("A", "B"), excluded=True)
    assert out.status == "excluded" and out.winner is None and EXCLUDED in out.text()


def test_non_finite_values_are_left_out_and_counted_never_averaged():
    a, b = _paired(30, gain=1.0, noise=0.2)
    a.values[3] = float("inf")
    b.values[5] = float("nan")
    out = compare(HIGHER, a, b, ("A", "B"))
    assert math.isfinite(out.value_a) and math.isfinite(out.value_b)
    assert out.dropped == 2 and out.n == 28 and "2 crop(s) without a finite value left out" in out.text()


def test_families_get_their_own_headlines():
    fid = HIGHER
    real = Measure("r", "R", "realism", "higher")
    art = Measure("x", "X", "artefacts", "lower")
    a, b = _paired(30, gain=1.0, noise=0.2)
    c, d = _paired(30, gain=0.0, noise=1.0)
    verdicts = judge([fid, real, art], {"m": a, "r": d, "x": a}, {"m": b, "r": c, "x": b}, ("A", "B"))
    lines = family_lines(verdicts.outcomes, "A", "B")
    # a headline names its sample size and each winning measure's interval
    assert lines[0].startswith("fidelity to the input: A ahead on M [+")
    assert "(30 crops; 95 % intervals" in lines[0]
    assert lines[1].startswith("realism: not separable with 30 crops")
    assert lines[2].startswith("artefacts: B ahead on X [-")  # lower is better: A's larger X loses
    assert "(30 crops; 95 % intervals of A's gain)" in lines[2]


def test_set_statistics_equal_the_plain_estimators_at_unit_weights():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 6, generator=g, dtype=torch.float64)
    y = torch.randn(24, 6, generator=g, dtype=torch.float64) + 0.3
    unit = torch.arange(12).repeat_interleave(2)  # 12 crops of 2 patches each
    ones = torch.ones(1, 12, dtype=torch.float64)
    kid = float(_kid_stat(x, y, unit)(ones)[0])
    assert kid == pytest.approx(1e3 * kid_from_features(x, y, subsets=1, subset_size=24)[0], rel=1e-9)
    from pid.eval.frechet import frechet_distance

    fid = _fid_stat(x, y, unit)
    assert float(fid(ones)[0]) == pytest.approx(float(frechet_distance(x, y)), rel=1e-9)
    # a resample's counts weigh as duplicated crops would
    counts = torch.tensor([[2, 0, 1, 1, 3, 0, 1, 1, 0, 1, 1, 1]], dtype=torch.float64)
    rows = torch.cat([torch.arange(2 * i, 2 * i + 2).repeat(int(c)) for i, c in enumerate(counts[0])])
    assert float(fid(counts)[0]) == pytest.approx(float(frechet_distance(x[rows], y[rows])), rel=1e-6)


def test_blockiness_terms_pool_to_the_set_blockiness():
    x = torch.rand(5, 3, 32, 32) * 2 - 1
    across, inside = blockiness_terms(x, 8)
    assert across.shape == (5,) and float(across.mean() / inside.mean()) == pytest.approx(blockiness(x, 8))


def test_psnr_of_identical_crops_is_capped_and_counted_not_infinite():
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    y = x.clone()
    y[1] += 0.1
    values = psnr(y.clamp(-1, 1), x, reduction="none")
    assert values[0] == pytest.approx(PSNR_CAP_DB) and math.isfinite(float(psnr(x, x)))
    assert psnr_capped(values) == 2 and values[1] < 30
    assert PSNR_CAP_DB == pytest.approx(58.92, abs=0.01)  # 8-bit quantisation noise


def test_a_capped_sample_draws_across_groups_in_proportion():
    keys = ([f"pdf_a@{i},0" for i in range(6)] + [f"pdf_b@{i},0" for i in range(6)]
            + [f"{img}@{i},0" for img in ("cam", "cat", "grass") for i in range(6)])
    groups = {"text_pages": "pdf_*"}
    idx = representative_indices(keys, 12, groups, seed=0)
    assert count_line([keys[i] for i in idx], groups) == "12 crops from 5 images (text_pages: 5, other: 7)"
    assert idx == representative_indices(keys, 12, groups, seed=0)
    assert idx != representative_indices(keys, 12, groups, seed=1)
    assert count_line([keys[i] for i in representative_indices(keys, 5)]) == "5 crops from 5 images"
    assert representative_indices(keys, None) == list(range(30))
    with pytest.raises(ValueError, match="at least 1"):
        representative_indices(keys, 0)


# -- the grain check on real images -------------------------------------------------------------------------

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")
PAGES = ("text", "page")  # grayscale printed text shipped with scikit-image


def _rgb(name: str) -> torch.Tensor:
    a = getattr(skd, name)()
    a = np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3]
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float() / 127.5 - 1


@pytest.fixture(scope="module")
def quickstart_like():
    """12 held-out 128² crops (photos and text), the embedded PCA latent fitted on the low-res images, and
    native decode + bicubic of each crop's latent: the quickstart's baseline at its size."""
    from pid.latents import PatchPCALatent
    from pid.utils.images import downsample, upsample

    images = [_rgb(n) for n in PHOTOS + PAGES]
    crops = []
    for k, img in enumerate(images):
        h, w = img.shape[-2:]
        for j in range(2 if k < 4 else 1):
            y, x = (37 + 71 * j) % (h - 128), (53 + 97 * j) % (w - 128)
            crops.append(img[:, y:y + 128, x:x + 128])
    truth = torch.stack(crops)
    lows = [downsample(img[None, :, : img.shape[1] // 32 * 32, : img.shape[2] // 32 * 32], 4)[0]
            for img in images]
    latent = PatchPCALatent().fit(lows, patches_per_image=4096)
    baseline = upsample(latent.decode(latent.encode(downsample(truth, 4))).float(), 4)
    return truth, baseline


def _grain_outcomes(panel, baseline):
    from pid.eval.verdict import judge

    excluded, grained = panel.grain_check(baseline, seed=0)
    verdicts = judge(panel.measures, grained, panel.evidence(baseline), ("baseline + grain", "baseline"),
                     excluded)
    return excluded, verdicts


def test_baseline_plus_grain_is_never_named_the_winner_at_the_quickstart_size(quickstart_like):
    from pid.eval.panel import Panel

    truth, baseline = quickstart_like
    panel = Panel(truth, sr_scale=4, patch=8)  # KID on the whole 128² crops, as the quickstart scores them
    excluded, verdicts = _grain_outcomes(panel, baseline)
    outcomes = verdicts.outcomes
    assert {o.measure.key for o in outcomes} >= {"psnr", "ssim", "haarpsi", "lr_psnr", "inception_dist",
                                                  "kid", "brisque", "grain", "blockiness"}
    for o in outcomes:
        assert o.winner != "baseline + grain", o.text()
        assert (o.status == "excluded") == (o.measure.key in excluded)
        if o.status == "excluded":
            assert EXCLUDED in o.text()
    # what the check finds at this size: BRISQUE scores grain as quality (the grainy crop "looks" sharper),
    # and so do the Inception features of a blocky patch-code decode; the pixel measures, the noise
    # estimate and the seams measure are not fooled
    assert {"brisque", "inception_dist", "kid"} <= excluded
    assert not excluded & {"psnr", "ssim", "haarpsi", "lr_psnr", "grain", "blockiness"}


def test_patch_kid_at_the_eval_quickstart_size_is_checked_against_grain(quickstart_like):
    """`eval=quickstart` scores KID on 64² tiles of 128² crops (crops.size); only KID/FID depend on it."""
    from pid.eval.panel import Panel

    truth, baseline = quickstart_like
    panel = Panel(truth[:10], sr_scale=4, patch=8, kid_patch=64, measures=["kid", "fid"])
    excluded, verdicts = _grain_outcomes(panel, baseline[:10])
    assert [o.measure.label for o in verdicts.outcomes] == ["patch-KID×1e3", "patch-FID"]
    assert all(o.winner != "baseline + grain" for o in verdicts.outcomes)
    assert "kid" in excluded and verdicts.outcomes[0].status == "excluded"
    assert verdicts.outcomes[1].winner is None  # 40 patches: FID never ranks (and it rewards grain here)


@pytest.mark.parametrize("bad", [0, -1, "abc", 2.5])
def test_eval_max_images_out_of_range_names_the_key(bad, tmp_path):
    from omegaconf import OmegaConf

    from pid.eval.inputs import load_eval_set
    from pid.utils.errors import PiDConfigError

    folder = tmp_path / "val"
    folder.mkdir()
    from PIL import Image

    pixels = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(folder / "a.png")
    cfg = OmegaConf.create({"seed": 0, "data": {"kind": "folder", "root": str(folder), "crop_size": 32,
                                                "crops_per_image": 2, "select": "grid", "max_images": bad,
                                                "batch_size": 2, "groups": {}}})

    with pytest.raises(PiDConfigError, match="data.max_images"):  # before any decoder is used
        load_eval_set(cfg, None)


def test_export_of_a_missing_file_is_one_line_not_a_traceback(tmp_path):
    from pid.weights.export import main

    with pytest.raises(SystemExit, match="no weights file"):
        main([str(tmp_path / "none.safetensors"), str(tmp_path / "out.pth"), "--target", "pid"])
