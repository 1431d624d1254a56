"""One scorer interface: ``scorer(list[PIL.Image]) -> list[float]`` with ``name`` and ``higher_is_better``.

- ``niqe``      offline NIQE (lower is better; needs ≥ 193 px; the pristine model from
                absolutely-not-scikit-video), see ``data_prep.niqe``;
- ``sharpness`` offline variance of the Laplacian of luma (higher is sharper; a cheap blur check);
- ``qalign``    Q-Align 1–5 from a local checkpoint (``data_prep.qalign``);
- ``brisque``   not available offline: the ``brisque`` wheel needs opencv and breaks on numpy 2.4
                (SPEC §8); asking for it raises a clear error.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.ndimage

from data_prep.niqe import luminance, niqe


class NiqeScorer:
    name, higher_is_better = "niqe", False

    def __call__(self, images) -> list[float]:
        out = []
        for im in images:
            try:
                out.append(niqe(luminance(np.asarray(im.convert("RGB")))))
            except ValueError:  # too small for 96-px patches
                out.append(math.nan)
        return out


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
        from data_prep.qalign import QAlignScorer

        return QAlignScorer(
            kw.get("qalign_path"),
            kw.get("device"),
            kw.get("batch_size", 8),
            kw.get("trust_remote_code", False),
        )
    if name == "brisque":
        raise RuntimeError(
            "BRISQUE is not available offline here: the 'brisque' wheel needs opencv-python-headless and "
            "fails on numpy 2.4 in its feature scaling (SPEC §8); use --scorer niqe or qalign"
        )
    raise ValueError(f"unknown scorer {name!r}: choose niqe, sharpness, qalign or brisque")
