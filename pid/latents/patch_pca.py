"""The embedded default latent space: a closed-form linear patch autoencoder (PCA).

``PatchPCALatent`` has the geometry of the SD3 / FLUX.1 VAEs (16 channels, 8×
down) so every shape, config and code path of a real run is exercised, yet it
needs no downloaded weights.

Why PCA:
- it is the optimal *linear* autoencoder in mean squared error: among all rank-16
  linear maps of 8×8×3 patches, projecting onto the top-16 principal components
  reconstructs best (Eckart–Young), so the latent keeps as much of the image as a
  16-channel, 8×-down linear code can;
- it is fitted in closed form (one covariance + ``torch.linalg.eigh``, in float64,
  deterministic) in seconds on the training images: no optimiser, no weights to
  download, a file of a few kB;
- it has a real decoder (the transposed map), so "native decode + bicubic" is a
  genuine cascade baseline and PiD has a genuine job: recover the detail the
  16-of-192 code threw away;
- like a VAE latent, z is spatial, low-frequency-dominated and normalised to
  ~zero mean / unit variance per channel (the per-channel shift/scale are the
  projections' own statistics on the fitted patches).

Encode is a stride-8 convolution with the basis after subtracting the mean patch;
decode is the transposed convolution plus the mean patch.

Create a file with ``python -m pid.latents.patch_pca OUT.safetensors --images DIR``
(or ``PatchPCALatent().fit(images).save(path)``). In a run, ``conf/latent/patch_pca.yaml`` builds it with
:func:`embedded_latent` and its :meth:`PatchPCALatent.prepare` hook fits it on the training images the
first time; its tensors travel in checkpoints and exports (``store_in_checkpoint``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pid.latents.base import LatentSpace
from pid.utils.errors import MissingWeightsError, PiDConfigError

log = logging.getLogger(__name__)

FORMAT = "pid.patch_pca.v1"
_KEYS = ("basis", "mean", "shift", "scale", "eigenvalues")


class PatchPCALatent(LatentSpace):
    """Linear patch autoencoder: top-``channels`` PCA components of ``patch``×``patch``×3 patches.

    A freshly constructed instance is *unfitted*; call :meth:`fit` or load one with
    :meth:`from_file` before encoding, or let :meth:`prepare` fit it on the training images
    (and save it at ``path`` when one is set; with ``fit_if_missing`` false it refuses instead).
    """

    basis: torch.Tensor
    mean: torch.Tensor
    eigenvalues: torch.Tensor
    store_in_checkpoint = True  # 15 KB: exports decode without the latent file
    #: Where :meth:`prepare` saves its fit (``latent.path``; set by :func:`embedded_latent`), and whether it
    #: may fit at all when unfitted.
    path: str | None = None
    fit_if_missing: bool = True

    def __init__(self, channels: int = 16, patch: int = 8):
        super().__init__()
        if not 1 <= channels <= 3 * patch * patch:
            raise PiDConfigError(
                f"latent.channels={channels} must be in [1, {3 * patch * patch}] for patch {patch}"
            )
        self._channels = int(channels)
        self._patch = int(patch)
        d = 3 * patch * patch
        self.register_buffer("basis", torch.zeros(channels, 3, patch, patch))  # rows = components
        self.register_buffer("mean", torch.zeros(3, patch, patch))  # the mean patch
        self.register_buffer("shift", torch.zeros(channels))
        self.register_buffer("scale", torch.ones(channels))
        self.register_buffer("eigenvalues", torch.zeros(d))  # full spectrum, descending
        self.register_buffer("n_fitted", torch.zeros((), dtype=torch.int64))  # patches seen by fit
        self.freeze()

    # --- LatentSpace ---------------------------------------------------------------------
    @property
    def channels(self) -> int:
        return self._channels

    @property
    def down_factor(self) -> int:
        return self._patch

    @property
    def noise_form(self) -> str:
        return "flow"

    @property
    def name(self) -> str:
        return f"patch_pca{self._channels}x{self._patch}"

    @property
    def n_patches(self) -> int:
        """Number of patches the basis was fitted on (0 when unfitted)."""
        return int(self.n_fitted)

    @property
    def fitted(self) -> bool:
        return self.n_patches > 0

    def _check_fitted(self) -> None:
        if not self.fitted:
            if self.path is not None:
                raise _missing_file(self.path)
            raise RuntimeError(
                f"{self.name} is not fitted: call .fit(images) or PatchPCALatent.from_file(path)"
            )

    def prepare(self, datamodule, cfg) -> "PatchPCALatent":
        """Fit on the training images the first time, and save the fit at ``path``.

        It is fitted on the *low-resolution* training images (↓``cfg.sr_scale``), the distribution it
        encodes. Fitted already (its file existed, or a checkpoint filled it): nothing to do.
        """
        if self.fitted:
            return self
        if not self.fit_if_missing:
            raise _missing_file(self.path)
        datamodule.prepare_data()
        folder = Path(datamodule.root) / "train"
        self.fit(lq_training_images(folder, int(cfg.sr_scale)))
        where = self.save(self.path) if self.path is not None else "(not saved: no path)"
        log.info("fitted the embedded latent on %s (explained variance %.3f) → %s",
                 folder, self.explained_variance(), where)
        return self

    def encode_raw(self, images: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        x = images.to(self.basis.dtype)
        bias = -(self.basis.flatten(1) @ self.mean.flatten())
        return F.conv2d(x, self.basis, bias=bias, stride=self._patch)

    def decode_raw(self, raw: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        x = F.conv_transpose2d(raw.to(self.basis.dtype), self.basis, stride=self._patch)
        h, w = raw.shape[-2:]
        return x + self.mean.repeat(1, h, w)

    # --- fitting -------------------------------------------------------------------------------
    def _patches(self, image: torch.Tensor) -> torch.Tensor:
        """(3, H, W) image in [-1, 1] → (N, 3·p·p) float64 rows of non-overlapping patches."""
        p = self._patch
        h, w = image.shape[-2] // p * p, image.shape[-1] // p * p
        if h == 0 or w == 0:
            return image.new_zeros((0, 3 * p * p), dtype=torch.float64)
        x = image[None, :, :h, :w].to(torch.float64)
        return F.unfold(x, kernel_size=p, stride=p)[0].T

    @torch.no_grad()
    def fit(
        self,
        images: torch.Tensor | Iterable,
        max_patches: int = 262_144,
        patches_per_image: int = 8192,
        seed: int = 0,
    ) -> "PatchPCALatent":
        """Fit basis, mean patch and normalisation from images; returns ``self``.

        ``images``: a (B, 3, H, W) tensor or an iterable of (3, H, W) / (B, 3, H, W)
        tensors or (H, W, 3) uint8 arrays. Float tensors are taken to be in [-1, 1],
        uint8 tensors/arrays in [0, 255]. Each image contributes at most
        ``patches_per_image`` patches (a seeded random subset) and fitting stops at
        ``max_patches``; the result is deterministic given the images' order.
        Second-order statistics are accumulated in float64 and the covariance is
        diagonalised with ``torch.linalg.eigh``.
        """
        d = 3 * self._patch**2
        gen = torch.Generator().manual_seed(seed)
        total = torch.zeros(d, dtype=torch.float64)
        outer = torch.zeros(d, d, dtype=torch.float64)
        n = 0
        for image in _iter_images(images):
            rows = self._patches(image)
            if len(rows) > patches_per_image:
                rows = rows[torch.randperm(len(rows), generator=gen)[:patches_per_image]]
            rows = rows[: max_patches - n]
            total += rows.sum(0)
            outer += rows.T @ rows
            n += len(rows)
            if n >= max_patches:
                break
        if n < d:
            raise ValueError(
                f"PatchPCALatent.fit needs at least {d} patches of {self._patch}×{self._patch}, got {n}"
            )
        mean = total / n
        cov = (outer - n * torch.outer(mean, mean)) / (n - 1)
        evals, evecs = torch.linalg.eigh(cov)  # ascending
        evals, evecs = evals.flip(0).clamp_min(0.0), evecs.flip(1)
        # Fix each eigenvector's sign (largest-magnitude entry positive) for determinism.
        idx = evecs.abs().argmax(0)
        evecs = evecs * torch.sign(evecs[idx, torch.arange(d)])
        top = evecs[:, : self._channels].T  # (C, d)
        # Projections of the fitted patches have mean W(mean − mean) = 0 and variance λ_c.
        std = evals[: self._channels].clamp_min(1e-12).sqrt()
        self.basis.copy_(top.reshape(self._channels, 3, self._patch, self._patch).float())
        self.mean.copy_(mean.reshape(3, self._patch, self._patch).float())
        self.shift.zero_()
        self.scale.copy_((1.0 / std).float())
        self.eigenvalues.copy_(evals.float())
        self.n_fitted.fill_(n)
        return self

    def explained_variance(self) -> float:
        """Fraction of the patch variance the kept components explain."""
        self._check_fitted()
        ev = self.eigenvalues.double()
        return float(ev[: self._channels].sum() / ev.sum())

    # --- files ------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write basis, mean patch, normalisation and spectrum to a safetensors file."""
        from safetensors.torch import save_file

        self._check_fitted()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: getattr(self, k).detach().cpu().contiguous() for k in _KEYS}
        meta = {
            "format": FORMAT,
            "channels": str(self._channels),
            "patch": str(self._patch),
            "n_patches": str(self.n_patches),
        }
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
        return path

    @classmethod
    def from_file(cls, path: str | os.PathLike | None) -> "PatchPCALatent":
        """Load a fitted latent space written by :meth:`save`.

        A missing file raises :class:`MissingWeightsError` naming ``latent.path`` and
        the command that creates the file.
        """
        from safetensors import safe_open

        if path is not None and Path(path).is_dir():
            raise PiDConfigError(f"latent.path='{path}' is a folder: give the .safetensors file of the "
                                 "fitted latent (a missing one is fitted and written there), e.g. "
                                 f"{Path(path) / 'patch_pca.safetensors'}")
        if path is None or not Path(path).is_file():
            raise _missing_file(path)
        try:
            handle = safe_open(str(path), framework="pt")
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
            raise PiDConfigError(f"latent.path='{path}' cannot be read as a .safetensors file ({err}): give "
                                 "a file written by PatchPCALatent.save, or a new path to fit one") from err
        with handle as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise PiDConfigError(
                    f"latent.path='{path}' is not a PatchPCALatent file (format {meta.get('format')!r}, "
                    f"expected {FORMAT!r})"
                )
            tensors = {k: f.get_tensor(k) for k in _KEYS}
        model = cls(channels=int(meta["channels"]), patch=int(meta["patch"]))
        for k, v in tensors.items():
            getattr(model, k).copy_(v)
        model.n_fitted.fill_(int(meta["n_patches"]))
        return model

    def extra_repr(self) -> str:
        return super().extra_repr() + f", fitted={self.fitted}"


def embedded_latent(path: str, channels: int, down_factor: int, fit_if_missing: bool) -> PatchPCALatent:
    """The embedded default latent space (conf/latent/patch_pca.yaml): read from ``path`` when the file
    exists, else unfitted, to be fitted by :meth:`PatchPCALatent.prepare` (when ``fit_if_missing``) or
    filled from a checkpoint that carries it. Building it never fits it and never needs the file."""
    if Path(path).exists():
        latent = PatchPCALatent.from_file(path)  # a folder or an unreadable file: refused with the reason
        log.info("embedded latent: %s (fitted earlier on %d patches; delete it, or set latent.path to a new "
                 "file, to fit it on other training images)", path, latent.n_patches)
        if (latent.channels, latent.down_factor) != (channels, down_factor):
            raise ValueError(f"latent.path={path} holds a {latent.channels}-channel {latent.down_factor}× "
                             f"latent, but the config asks for latent.channels={channels}, "
                             f"latent.down_factor={down_factor}")
    else:
        latent = PatchPCALatent(channels=channels, patch=down_factor)
    latent.path, latent.fit_if_missing = str(path), bool(fit_if_missing)
    return latent


def lq_training_images(folder: Path, sr_scale: int):
    """The training images as the encoder sees them: bicubic antialiased ↓sr_scale, in [-1, 1].

    Files that cannot be decoded (corrupt, truncated, not an image) are passed over with a warning naming
    each, as the training loader passes them over; the fit uses the rest."""
    from pid.data.io import list_image_files, load_rgb

    for file in list_image_files(folder):
        try:
            pixels = load_rgb(file)
        except Exception as e:  # noqa: BLE001 - PIL raises several types for broken files
            log.warning("latent fit: passed over %s, which cannot be decoded (%s: %s)", file,
                        type(e).__name__, e)
            continue
        img = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        h, w = img.shape[-2] // sr_scale, img.shape[-1] // sr_scale
        if min(h, w) >= 16:
            yield F.interpolate(img, size=(h, w), mode="bicubic", antialias=True).clamp(-1, 1)[0]


def _missing_file(path) -> MissingWeightsError:
    """The error for a PatchPCA file that is not there: names ``latent.path`` and how to make the file."""
    return MissingWeightsError(
        "PatchPCALatent",
        config_key="latent.path",
        expected="a .safetensors file written by PatchPCALatent.save",
        source=(
            "fitting it in seconds on your training images: "
            "`python -m pid.latents.patch_pca OUT.safetensors --images DIR` "
            "(or PatchPCALatent().fit(images).save(OUT)), or with latent.fit_if_missing=true"
        ),
        path=path,
    )


def _iter_images(images) -> Iterable[torch.Tensor]:
    """Yield (3, H, W) float tensors in [-1, 1] from the inputs :meth:`PatchPCALatent.fit` accepts."""
    if isinstance(images, (torch.Tensor, np.ndarray)):
        images = [images]
    for item in images:
        t = item
        if isinstance(item, np.ndarray):
            t = torch.from_numpy(item.copy() if not item.flags.writeable else np.ascontiguousarray(item))
            if t.shape[-1] == 3:  # (H, W, 3) or (B, H, W, 3) arrays
                t = t.movedim(-1, -3)
        batch = t if t.ndim == 4 else t[None]
        for img in batch:
            if img.shape[0] != 3:
                raise ValueError(f"expected RGB images (3, H, W), got {tuple(img.shape)}")
            yield img.double() / 127.5 - 1.0 if img.dtype == torch.uint8 else img


def fit_from_folder(
    folder: str | os.PathLike, channels: int = 16, patch: int = 8, downscale: int = 1, **fit_kwargs
) -> PatchPCALatent:
    """Fit on every image file under ``folder`` (sorted order).

    ``downscale`` > 1 first shrinks each image by that factor (antialiased bicubic), so the
    basis is fitted on the low-resolution images the latent will encode during training.
    """
    from PIL import Image

    from pid.data.io import list_image_files, load_rgb

    files = list_image_files(folder)
    if not files:
        raise PiDConfigError(f"no images found under '{folder}' to fit PatchPCALatent on")

    def images():
        for f in files:
            rgb = load_rgb(f)
            if downscale > 1:
                h, w = rgb.shape[0] // downscale, rgb.shape[1] // downscale
                if min(h, w) < patch:
                    continue
                rgb = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BICUBIC))
            yield rgb

    return PatchPCALatent(channels, patch).fit(images(), **fit_kwargs)


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m pid.latents.patch_pca OUT.safetensors --images DIR``."""
    ap = argparse.ArgumentParser(description="Fit the PatchPCA latent space on a folder of images.")
    ap.add_argument("out", help="output .safetensors path (the value of latent.path)")
    ap.add_argument("--images", required=True, help="folder of training images (searched recursively)")
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--patch", type=int, default=8)
    ap.add_argument("--downscale", type=int, default=1, help="fit on images shrunk by this factor (sr_scale)")
    ap.add_argument("--max-patches", type=int, default=262_144)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    latent = fit_from_folder(
        args.images, args.channels, args.patch, args.downscale, max_patches=args.max_patches, seed=args.seed
    )
    path = latent.save(args.out)
    print(
        json.dumps(
            {
                "path": str(path),
                "channels": latent.channels,
                "down_factor": latent.down_factor,
                "n_patches": latent.n_patches,
                "explained_variance": round(latent.explained_variance(), 5),
            }
        )
    )


if __name__ == "__main__":
    main()
