"""A latent space known only by its geometry: enough to *decode with PiD*, no encoder weights needed.

``pid.decode`` and ``load_decoder(..., build_latent=False)`` use it: PiD needs the latent's channels,
down factor and noise form, not its encoder, so decoding a saved latent never asks for VAE weights.
"""

from __future__ import annotations

import torch

from pid.latents.base import LatentSpace


class LatentGeometry(LatentSpace):
    """channels / down_factor / noise_form of a latent space, without its encoder and native decoder."""

    def __init__(
        self,
        channels: int,
        down_factor: int,
        noise_form: str = "flow",
        name: str = "latent",
        packing: int = 1,
    ):
        super().__init__()
        self._channels, self._down, self._noise_form = int(channels), int(down_factor), noise_form
        self._name, self.packing = name, int(packing)
        self.freeze()

    @classmethod
    def from_config(cls, latent_cfg: dict) -> LatentGeometry:
        """From a run's ``latent`` config (any latent space's yaml)."""
        return cls(
            int(latent_cfg["channels"]),
            int(latent_cfg["down_factor"]),
            str(latent_cfg.get("noise_form") or "flow"),
            str(latent_cfg.get("name") or "latent"),
            int(latent_cfg.get("packing") or 1),
        )

    def encode_raw(self, images: torch.Tensor) -> torch.Tensor:
        raise RuntimeError(
            f"{self.name}: only the geometry is loaded; build the latent space to encode images"
        )

    def decode_raw(self, raw: torch.Tensor) -> torch.Tensor:
        raise RuntimeError(
            f"{self.name}: only the geometry is loaded; build the latent space for native decoding"
        )
