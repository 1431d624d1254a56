"""BRISQUE: our numpy port against the reference package's scores, its ordering, and the two entry points."""

import numpy as np
import pytest
import torch
from PIL import Image


def _model_installed() -> bool:
    from pid.eval.brisque import model_dir

    try:
        model_dir()
        return True
    except FileNotFoundError:
        return False


pytestmark = pytest.mark.skipif(
    not _model_installed(), reason="needs the wheel brisque==0.2.0 (its SVR model)"
)

# The PyPI package brisque 0.2.0 (opencv 5.0, libsvm 3.37, numpy 2.3 — it fails on numpy 2.4) on these images;
# "noisy": + N(0, 20²) per channel from numpy's default_rng(0), clipped to uint8.
REFERENCE = {"coffee": 3.0479264284917633, "coffee_noisy": 40.54287900681393,
             "rocket": 4.23315409325491, "rocket_noisy": 60.4857828890766}


def _noisy(img: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", ["coffee", "rocket"])
def test_brisque_matches_reference_package(name):
    import skimage.data

    from pid.eval.brisque import brisque

    img = getattr(skimage.data, name)()
    clean, noisy = brisque(img), brisque(_noisy(img))
    assert clean == pytest.approx(REFERENCE[name], abs=1e-6)
    assert noisy == pytest.approx(REFERENCE[name + "_noisy"], abs=1e-6)
    assert noisy > clean + 20  # noise is the distortion BRISQUE was trained on


def test_brisque_half_scale_is_opencv_bicubic():
    from pid.eval.brisque import half_size

    x = np.arange(7 * 9, dtype=np.float64).reshape(7, 9) ** 1.5
    y = half_size(x)
    assert y.shape == (4, 4)  # OpenCV rounds 3.5 → 4 and 4.5 → 4 (half to even)
    flat = half_size(np.full((6, 8), 0.3))
    assert np.array_equal(flat, np.full((3, 4), 0.3))  # flat areas stay exactly flat (the AGGD splits at 0)


def test_brisque_scorer_and_eval_entry_points():
    import skimage.data

    from data_prep.scorers import make_scorer
    from pid.eval.noref import brisque_available, brisque_scores

    img = skimage.data.coffee()[:200, :200]
    scorer = make_scorer("brisque")
    assert scorer.name == "brisque" and not scorer.higher_is_better
    scores = scorer([Image.fromarray(img), Image.new("RGB", (8, 8)), Image.new("RGB", (64, 64), (9, 9, 9))])
    assert np.isfinite(scores[0]) and np.isnan(scores[1])  # under 16 px → NaN
    assert scores[2] > scores[0] + 50  # a flat grey square is far from a natural image
    assert brisque_available() == (True, "ok")
    batch = torch.from_numpy(img).permute(2, 0, 1)[None]
    assert brisque_scores(batch)[0] == pytest.approx(scores[0], abs=1e-9)
