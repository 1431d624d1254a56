"""VAE latent spaces through diffusers (FLUX.1, SD3, …): a frozen AutoencoderKL with its published scale/shift."""

from __future__ import annotations

from pathlib import Path

import torch

from pid.latents.base import LatentSpace
from pid.utils.errors import MissingWeightsError


class DiffusersVAELatent(LatentSpace):
    """A diffusers ``AutoencoderKL`` from a local folder (diffusers layout) or a single ``.safetensors`` file.

    The encoder's posterior mean is used (deterministic), normalised as ``(z − shift)·scale``.

    Args:
        path: folder with ``config.json`` + weights, a single-file checkpoint, or a hub id (online users).
        subfolder: e.g. ``vae`` when ``path`` is a whole pipeline folder.
        channels, down_factor: the expected geometry, checked against the loaded model.
        shift, scale: published normalisation constants.
        noise_form: "flow" for flow-matching LDM latents, "vp" for SDXL-style latents.
        dtype: weights dtype ("float32" or "bfloat16").
    """

    def __init__(self, path: str | None, channels: int, down_factor: int, shift: float, scale: float,
                 noise_form: str = "flow", dtype: str = "bfloat16", subfolder: str | None = None,
                 config_key: str = "latent.path"):
        super().__init__()
        if not path or not (Path(str(path)).expanduser().exists() or _is_hub_id(str(path))):
            raise MissingWeightsError(
                f"VAE latent ({channels} ch, {down_factor}×)", config_key,
                "a diffusers AutoencoderKL folder (config.json + diffusion_pytorch_model.safetensors) "
                "or a single .safetensors file", source="the LDM's release, e.g. black-forest-labs/FLUX.1-dev/vae",
                path=path)
        from diffusers import AutoencoderKL

        torch_dtype = getattr(torch, dtype)
        path = str(Path(str(path)).expanduser()) if Path(str(path)).expanduser().exists() else str(path)
        if path.endswith((".safetensors", ".ckpt", ".pt")):
            vae = AutoencoderKL.from_single_file(path, torch_dtype=torch_dtype)
        else:
            vae = AutoencoderKL.from_pretrained(path, subfolder=subfolder, torch_dtype=torch_dtype)
        self.vae = vae
        latent_channels = int(vae.config.latent_channels)
        vae_down = 2 ** (len(vae.config.block_out_channels) - 1)
        if (latent_channels, vae_down) != (channels, down_factor):
            raise ValueError(f"{path}: the VAE has {latent_channels} channels at {vae_down}× down, but the config "
                             f"says latent.channels={channels}, latent.down_factor={down_factor}")
        self._channels, self._down, self._noise_form = channels, down_factor, noise_form
        self.shift.fill_(shift)
        self.scale.fill_(scale)
        self.freeze()

    @property
    def channels(self) -> int:
        return self._channels

    @property
    def down_factor(self) -> int:
        return self._down

    @property
    def noise_form(self) -> str:
        return self._noise_form

    def encode_raw(self, images: torch.Tensor) -> torch.Tensor:
        dtype = next(self.vae.parameters()).dtype
        return self.vae.encode(images.to(dtype)).latent_dist.mean.float()

    def decode_raw(self, raw: torch.Tensor) -> torch.Tensor:
        dtype = next(self.vae.parameters()).dtype
        return self.vae.decode(raw.to(dtype)).sample.float()


def _is_hub_id(path: str) -> bool:
    return path.count("/") == 1 and not path.startswith((".", "/", "~"))
