"""BRISQUE, offline.

Mittal, Moorthy & Bovik, "No-reference image quality assessment in the spatial domain", 2012.

A numpy/scipy implementation of the features and the support-vector regression of the PyPI package
``brisque`` 0.2.0, whose model files (``models/svm.txt``, a libsvm ε-SVR with an RBF kernel, and
``models/normalize.pickle``, the per-feature min/max of its training set) ship in its wheel. The package
itself is never imported: it needs opencv and libsvm and fails on numpy ≥ 2.4. Install the model with
``pip install --no-deps brisque==0.2.0``. Lower is better (about 0–100).

Features (36 = 18 at full and 18 at half resolution), on luma in [0, 1] (skimage's rgb2gray weights):
    MSCN  Î = (I − μ) / (σ + 1/255), μ and σ from a 7×7 Gaussian (σ_g = 7/6) with zero padding
    AGGD fits (α, η, σ_l², σ_r²) of Î and of its four neighbour products (H, V, D1, D2);
    for Î itself only (α, (σ_l² + σ_r²)/2).
Score: f' = −1 + 2 (f − min)/(max − min);  q = Σ_i c_i exp(−γ ‖f' − s_i‖²) − ρ.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import pickle
from pathlib import Path

import numpy as np
import scipy.optimize
import scipy.signal
import scipy.special

MIN_SIDE = 16
_RGB_TO_LUMA = np.array([0.2125, 0.7154, 0.0721])  # skimage.color.rgb2gray
_INSTALL = "pip install --no-deps brisque==0.2.0"


def model_dir() -> Path:
    spec = importlib.util.find_spec("brisque")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"BRISQUE needs the model that ships in the wheel 'brisque' ({_INSTALL})")
    path = Path(spec.submodule_search_locations[0]) / "models"
    for name in ("svm.txt", "normalize.pickle"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"BRISQUE model file {path / name} is missing; reinstall with {_INSTALL}")
    return path


class _ListsOnly(pickle.Unpickler):
    """The normalisation file is a dict of float lists; refuse anything that would run code."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in the BRISQUE normalisation file")


class SVRModel:
    """A libsvm ε-SVR with an RBF kernel, read from its text format."""

    def __init__(self, path: Path):
        header: dict[str, str] = {}
        coefs, vectors = [], []
        with open(path) as f:
            for line in f:
                if line.strip() == "SV":
                    break
                key, _, value = line.strip().partition(" ")
                header[key] = value
            if header.get("svm_type") != "epsilon_svr" or header.get("kernel_type") != "rbf":
                raise ValueError(f"{path}: expected an epsilon_svr with an rbf kernel, got {header}")
            for line in f:
                parts = line.split()
                if not parts:
                    continue
                coefs.append(float(parts[0]))
                vectors.append({int(k): float(v) for k, v in (p.split(":") for p in parts[1:])})
        dim = max(max(v) for v in vectors)
        self.support = np.zeros((len(vectors), dim))
        for i, v in enumerate(vectors):
            for k, x in v.items():
                self.support[i, k - 1] = x
        self.coef = np.array(coefs)
        self.gamma = float(header["gamma"])
        self.rho = float(header["rho"])

    def __call__(self, x: np.ndarray) -> float:
        d2 = ((self.support - x[None, :]) ** 2).sum(axis=1)
        return float(self.coef @ np.exp(-self.gamma * d2) - self.rho)


@functools.lru_cache(maxsize=1)
def _model() -> tuple[SVRModel, np.ndarray, np.ndarray]:
    path = model_dir()
    with open(path / "normalize.pickle", "rb") as f:
        scale = _ListsOnly(f).load()
    lo = np.array([float(np.ravel(v)[0]) for v in scale["min_"]])
    hi = np.array([float(np.ravel(v)[0]) for v in scale["max_"]])
    return SVRModel(path / "svm.txt"), lo, hi


def _gaussian_kernel(n: int = 7, sigma: float = 7.0 / 6.0) -> np.ndarray:
    y, x = np.indices((n, n)) - n // 2
    # The normalising constant cancels, but flat regions give MSCN values of exactly 0 only with the
    # reference's rounding, and the AGGD fit splits at 0: keep its exact expression.
    k = 1 / (2 * np.pi * sigma**2) * np.exp(-(x**2 + y**2) / (2 * sigma**2))
    return k / np.sum(k)


def mscn(luma: np.ndarray) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients of luma in [0, 1]."""
    k = _gaussian_kernel()
    mu = scipy.signal.convolve2d(luma, k, "same")
    sd = np.sqrt(np.abs(mu**2 - scipy.signal.convolve2d(luma**2, k, "same")))
    return (luma - mu) / (sd + 1.0 / 255.0)


def _phi(alpha):
    gamma = scipy.special.gamma
    return gamma(2 / alpha) ** 2 / (gamma(1 / alpha) * gamma(3 / alpha))


def aggd_fit(x: np.ndarray) -> tuple[float, float, float, float]:
    """Asymmetric generalised Gaussian moment fit: (α, mean η, σ_l, σ_r)."""
    x = x.ravel()
    left, right = x[x < 0], x[x >= 0]
    sigma_l = math.sqrt(np.mean(left**2)) if left.size else 0.0
    sigma_r = math.sqrt(np.mean(right**2)) if right.size else 0.0
    gamma = sigma_l / sigma_r if sigma_r > 0 else math.inf
    r_hat = np.mean(np.abs(x)) ** 2 / np.mean(x**2)
    big_r = r_hat * (gamma**3 + 1) * (gamma + 1) / (gamma**2 + 1) ** 2
    alpha = float(scipy.optimize.root(lambda a: _phi(a) - big_r, [0.2]).x[0])
    c = math.sqrt(scipy.special.gamma(1 / alpha) / scipy.special.gamma(3 / alpha))
    mean = (sigma_r - sigma_l) * c * scipy.special.gamma(2 / alpha) / scipy.special.gamma(1 / alpha)
    return alpha, float(mean), sigma_l, sigma_r


def features_one_scale(luma: np.ndarray) -> list[float]:
    m = mscn(luma)
    alpha, _, sl, sr = aggd_fit(m)
    feats = [alpha, (sl**2 + sr**2) / 2]
    pairs = (m[:, :-1] * m[:, 1:], m[:-1, :] * m[1:, :], m[:-1, :-1] * m[1:, 1:], m[1:, :-1] * m[:-1, 1:])
    for prod in pairs:
        alpha, mean, sl, sr = aggd_fit(prod)
        feats += [alpha, mean, sl**2, sr**2]
    return feats


def _half_cubic_1d(x: np.ndarray, axis: int) -> np.ndarray:
    """Bicubic (a = −0.75) 2× reduction along one axis, half-pixel centres, edges replicated (OpenCV's)."""
    n = x.shape[axis]
    out = int(np.rint(n * 0.5))
    base = 2 * np.arange(out)
    w = (-0.09375, 0.59375, 0.59375, -0.09375)  # the cubic's weights at offsets −1, 0, 1, 2 for fraction 1/2
    y = 0.0
    for off, wk in zip((-1, 0, 1, 2), w):
        y = y + wk * np.take(x, np.clip(base + off, 0, n - 1), axis=axis)
    return y


def half_size(luma: np.ndarray) -> np.ndarray:
    return _half_cubic_1d(_half_cubic_1d(luma, 1), 0)  # rows first, as OpenCV (flat areas stay exact)


def features(luma: np.ndarray) -> np.ndarray:
    return np.array(features_one_scale(luma) + features_one_scale(half_size(luma)))


def luma01(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3|4) uint8 or (H, W) → luma in [0, 1] (alpha dropped)."""
    img = np.asarray(rgb)
    img = img.astype(np.float64) * (1.0 / 255.0 if img.dtype == np.uint8 else 1.0)  # skimage's rounding
    if img.ndim == 3:
        img = img[..., :3] @ _RGB_TO_LUMA
    return img


def brisque(rgb: np.ndarray) -> float:
    """BRISQUE of an (H, W, 3) uint8 image (lower is better); ValueError for images under 16 px a side."""
    luma = luma01(rgb)
    if min(luma.shape) < MIN_SIDE:
        raise ValueError(
            f"BRISQUE needs at least {MIN_SIDE} px per side, got {luma.shape[1]}x{luma.shape[0]}"
        )
    svr, lo, hi = _model()
    f = features(luma)
    if not np.all(np.isfinite(f)):
        raise ValueError("BRISQUE features are not finite (a flat or constant image)")
    return svr(-1 + 2.0 / (hi - lo) * (f - lo))
