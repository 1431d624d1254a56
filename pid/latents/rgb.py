"""The identity "latent" on the low-resolution RGB image: the diffusion-SR cascade baseline.

A PiD network trained with this latent space (``latent=rgb``) is a pixel-diffusion super-resolution
model conditioned on the low-res RGB image, with exactly the same backbone and adapter classes as PiD.
At evaluation the cascade is "native decode of the LDM latent → this SR model" (``pid.eval.baselines``),
which is the fair comparison the issue asks for: same backbone class, same sampler, same steps.

3 channels, down factor 1, images in [-1, 1] are the latent (no normalisation, flow noising).
"""

from __future__ import annotations

import torch

from pid.latents.base import LatentSpace


class RGBLatent(LatentSpace):
    """Identity map: the low-res image *is* the latent (3 channels, 1× down)."""

    def __init__(self, name: str = "rgb", channels: int = 3, down_factor: int = 1):
        super().__init__()
        if (int(channels), int(down_factor)) != (3, 1):  # the yaml states the geometry for config checks
            raise ValueError(f"RGBLatent is 3 channels at 1x down, got channels={channels}, "
                             f"down_factor={down_factor}")
        self._name = name
        self.freeze()

    @property
    def channels(self) -> int:
        return 3

    @property
    def down_factor(self) -> int:
        return 1

    @property
    def name(self) -> str:
        return self._name

    def encode_raw(self, images: torch.Tensor) -> torch.Tensor:
        return images.float()

    def decode_raw(self, raw: torch.Tensor) -> torch.Tensor:
        return raw.float()
