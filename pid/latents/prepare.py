"""Get the configured latent space ready before training: load it, or fit the embedded one once."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from pid.latents.base import LatentSpace
from pid.latents.patch_pca import PatchPCALatent

log = logging.getLogger(__name__)


def embedded_latent(path: str, channels: int = 16, down_factor: int = 8,
                    fit_if_missing: bool = True) -> PatchPCALatent:
    """The embedded default latent space from ``path``; unfitted (to be fitted by `prepare_latent`)
    when the file is missing and ``fit_if_missing``, else a MissingWeightsError naming ``latent.path``."""
    if Path(path).is_file() or not fit_if_missing:
        latent = PatchPCALatent.from_file(path)
        if (latent.channels, latent.down_factor) != (channels, down_factor):
            raise ValueError(f"latent.path={path} holds a {latent.channels}-channel {latent.down_factor}× latent, "
                             f"but the config asks for latent.channels={channels}, latent.down_factor={down_factor}")
        return latent
    latent = PatchPCALatent(channels=channels, patch=down_factor)
    latent.pending_path = str(path)
    return latent


def lq_training_images(folder: Path, sr_scale: int):
    """The training images as the encoder sees them: bicubic antialiased ↓sr_scale, in [-1, 1]."""
    from pid.data.io import list_image_files, load_rgb

    for file in list_image_files(folder):
        img = torch.from_numpy(load_rgb(file)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        h, w = img.shape[-2] // sr_scale, img.shape[-1] // sr_scale
        if min(h, w) >= 16:
            yield F.interpolate(img, size=(h, w), mode="bicubic", antialias=True).clamp(-1, 1)[0]


def prepare_latent(latent: LatentSpace, datamodule, cfg) -> LatentSpace:
    """Fit the embedded latent on the training images the first time it is needed, and save it.

    It is fitted on the *low-resolution* training images (↓sr_scale), the distribution it encodes.
    """
    if isinstance(latent, PatchPCALatent) and not latent.fitted:
        datamodule.prepare_data()
        folder = Path(datamodule.root) / "train"
        latent.fit(lq_training_images(folder, int(cfg.sr_scale)))
        path = latent.save(latent.pending_path)
        log.info("fitted the embedded latent on %s (explained variance %.3f) → %s",
                 folder, latent.explained_variance(), path)
    return latent
