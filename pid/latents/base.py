"""The one interface every latent space implements.

A latent space is a frozen encoder/decoder pair plus the normalisation that
turns its raw latent into the unit-scale latent the diffusion model sees
(docs/method.md §5: e.g. FLUX.1 uses ``(z - 0.1159) * 0.3611``). Subclasses implement
``encode_raw``/``decode_raw``; this base class adds normalisation, the frozen
contract and shape bookkeeping, so training code only ever calls ``encode``
(images → normalised z) and ``decode`` (normalised z → images, the "native
decode" of the cascade baseline).

Two hooks let callers treat every space alike, without testing for a type:
``prepare(datamodule, cfg)`` gets a space ready before training (a space fitted on
the data fits itself there), and ``store_in_checkpoint`` says that the space's
tensors travel in checkpoints and exports, so a loader builds it from its config
(which neither fits nor needs its file) and fills it from the checkpoint.

Images are float tensors in [-1, 1] of shape (B, 3, H, W).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal

import torch
from torch import nn

NoiseForm = Literal["flow", "vp"]


class LatentSpace(nn.Module, ABC):
    """A frozen image ↔ latent map with a known geometry and normalisation.

    Frozen by design: all parameters have ``requires_grad=False``, the module
    cannot leave eval mode, and ``encode``/``decode`` run without autograd.
    (Code that really needs gradients through the map can call ``encode_raw``
    / ``decode_raw`` directly.)

    Normalisation: ``normalize(raw) = (raw - shift) * scale`` with ``shift`` and
    ``scale`` buffers that are scalars or per-channel vectors; subclasses with a
    different rule (per-(C,H,W) statistics, LayerNorm) override
    ``normalize``/``denormalize``.
    """

    shift: torch.Tensor
    scale: torch.Tensor

    #: Small latent spaces whose tensors travel inside training checkpoints and decoder exports
    #: (so a decoder file is self-contained; building such a space from its config neither fits it nor
    #: needs its file, the loader fills it); large frozen encoders are rebuilt from their config.
    store_in_checkpoint: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.zeros(()))
        self.register_buffer("scale", torch.ones(()))

    # --- geometry -----------------------------------------------------------------
    # Subclasses either override these properties or set ``_channels``, ``_down`` and optionally
    # ``_noise_form`` / ``_name`` in their constructor.
    @property
    def channels(self) -> int:
        """Channels of the latent z."""
        return self._channels

    @property
    def down_factor(self) -> int:
        """Pixels per latent cell along each side (8 for SD3/FLUX VAEs)."""
        return self._down

    @property
    def noise_form(self) -> NoiseForm:
        """Latent-noising form that suits this space (docs/method.md §3, Eq. 4).

        "flow": z̃ = (1−σ)z + σξ (flow-matching LDM latents: FLUX, SD3, RAE);
        "vp":   z̃ = √(1−σ²)z + σξ (SDXL-style latents).
        """
        return getattr(self, "_noise_form", "flow")

    @property
    def name(self) -> str:
        """Short identifier used in logs, file names and reports."""
        return getattr(self, "_name", None) or type(self).__name__

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """Shape (C, h, w) of the latent of an image of ``height`` × ``width`` pixels."""
        f = self.down_factor
        if height % f or width % f:
            raise ValueError(
                f"{self.name}: image size {height}×{width} is not a multiple of the down factor {f}"
            )
        return (self.channels, height // f, width // f)

    # --- hooks -------------------------------------------------------------------------
    def prepare(self, datamodule, cfg) -> "LatentSpace":
        """Get ready to encode ``datamodule``'s training images (``cfg``: the run config), before training.

        Nothing to do for a space built from its weights (this default); a space fitted on the data fits
        itself here the first time. Returns the space.
        """
        return self

    def identity_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors that define what this space encodes, hashed into its fingerprint (:mod:`pid.identity`).

        The state dict by default (weights, fitted bases, normalisation buffers); spaces leave out parts
        that do not change the latent, such as a native decoder."""
        return self.state_dict()

    # --- the two maps subclasses provide -------------------------------------------
    @abstractmethod
    def encode_raw(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1], (B, 3, H, W) → raw (un-normalised) latent (B, C, H/f, W/f)."""

    @abstractmethod
    def decode_raw(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw latent → images in [-1, 1] (not clamped)."""

    # --- normalisation ---------------------------------------------------------------
    def _stat(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        t = t.to(device=like.device, dtype=like.dtype)
        return t.view(1, -1, 1, 1) if t.ndim == 1 else t

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw latent → normalised latent: ``(raw − shift) · scale``."""
        return (raw - self._stat(self.shift, raw)) * self._stat(self.scale, raw)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latent → raw latent: ``z / scale + shift``."""
        return z / self._stat(self.scale, z) + self._stat(self.shift, z)

    # --- the public, frozen API -------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1], (B, 3, H, W) → NORMALISED latent (B, C, H/f, W/f)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name}.encode expects (B, 3, H, W) images, got {tuple(images.shape)}")
        self.latent_shape(images.shape[-2], images.shape[-1])
        return self.normalize(self.encode_raw(images))

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latent → images in [-1, 1] with the space's native decoder (clamped)."""
        if z.ndim != 4 or z.shape[1] != self.channels:
            raise ValueError(
                f"{self.name}.decode expects (B, {self.channels}, h, w) latents, got {tuple(z.shape)}"
            )
        return self.decode_raw(self.denormalize(z)).clamp(-1.0, 1.0)

    # --- frozen contract -----------------------------------------------------------------
    def freeze(self) -> "LatentSpace":
        """Disable gradients for every parameter and switch to eval mode (idempotent)."""
        self.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> "LatentSpace":
        """Latent spaces never train: any request keeps the module in eval mode."""
        return super().train(False)

    def extra_repr(self) -> str:
        return (
            f"name={self.name}, channels={self.channels}, down_factor={self.down_factor}, "
            f"noise_form={self.noise_form}"
        )
