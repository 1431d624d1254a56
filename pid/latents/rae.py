"""Representation-autoencoder (RAE) latents: frozen vision-encoder features as the latent (SPEC §5).

* **DINOv2-B with registers** (RAE, Zheng et al. 2025): a 512² image is resized (bicubic) to 448²,
  ImageNet-normalised and encoded by ViT-B/14 with 4 register tokens; the final LayerNorm is used
  *without* its affine parameters and the 5 special tokens (CLS + 4 registers) are dropped →
  768 × 32 × 32, i.e. a "virtual" 16× down factor.
* **SigLIP-2 So400M/14** (Scale-RAE): a 256² image is resized (bicubic, antialiased) to 224²,
  normalised with mean = std = 0.5, encoded by So400M/14 (no special tokens) and the final LayerNorm
  is used without affine → 1152 × 16 × 16 (also 16×); PiD uses it at sr_scale 8 (256 → 2048).

In general an H×W image gives an (H/16)×(W/16) grid: the encoder sees (H/16·14)×(W/16·14) pixels.
The encoders are built with **timm** (``vit_base_patch14_reg4_dinov2``, ``vit_so400m_patch14_siglip_224``)
from a local weights file (timm/open_clip safetensors, or the original DINOv2 ``.pth``; timm's
checkpoint filters convert them) or a ``hf-hub:`` id for users with internet; positions are
interpolated at run time (``dynamic_img_size``), as the RAE authors' Hugging Face encoder does.

Normalisation is per (C, H, W): ``z_n = (z − mean) / √(var + 1e-5)`` with statistics computed by
``python -m pid.latents.stats`` (:mod:`pid.latents.stats`) and saved next to the config
(``conf/latent/stats/``); the RAE authors' ``stat.pt`` files (``{"mean", "var"}``) load as well. At a
grid other than the statistics' grid they are resampled bilinearly.

The native decoder (cascade baseline) is the RAE ViT decoder (:mod:`pid.latents.rae_decoder`),
loaded from the RAE / Scale-RAE released checkpoints.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pid.latents.base import LatentSpace
from pid.latents.rae_decoder import RAEDecoder, decoder_kwargs, load_decoder_state
from pid.utils.errors import MissingWeightsError, PiDConfigError

ENCODERS = {
    # name: (timm architecture, special tokens, image mean, image std, antialiased resize)
    "dinov2": ("vit_base_patch14_reg4_dinov2", 5, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), False),
    "siglip2": ("vit_so400m_patch14_siglip_224", 0, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), True),
}
STATS_COMMAND = "python -m pid.latents.stats --latent {name} --source /path/to/shards_or_images"


def _local_or_hub(path) -> str | None:
    if path in (None, "", "???"):
        return None
    p = Path(str(path)).expanduser()
    if p.exists():
        return str(p)
    if str(path).startswith("hf-hub:"):
        return str(path)
    return None


def build_timm_encoder(arch: str, weights: str | None, overrides: dict | None = None) -> nn.Module:
    """The timm ViT with final LayerNorm without affine; random weights when ``weights`` is None."""
    import timm

    kwargs = {"num_classes": 0, "dynamic_img_size": True, **(overrides or {})}
    if weights is None:
        model = timm.create_model(arch, pretrained=False, **kwargs)
    elif weights.startswith("hf-hub:"):
        model = timm.create_model(weights, pretrained=True, **kwargs)
    else:
        model = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": weights}, **kwargs)
    norm = model.norm
    model.norm = nn.LayerNorm(norm.normalized_shape, eps=norm.eps, elementwise_affine=False)
    return model


class RAELatent(LatentSpace):
    """Frozen DINOv2 / SigLIP-2 patch features with per-(C,H,W) normalisation and an RAE decoder.

    Args:
        encoder: "dinov2" or "siglip2" (picks architecture, special tokens, pixel normalisation).
        path: encoder weights (local file or ``hf-hub:`` id); config key ``latent.path``.
        channels: encoder width (768 / 1152), checked against the model.
        down_factor: input pixels per latent cell (16: the 14-pixel patches see a 14/16 resized image).
        native_size: the image side the statistics and decoder are made for (512 / 256).
        stats_path: per-(C,H,W) ``{"mean", "var"}`` file; ``null``: none (only while computing them).
        stats_eps: ε in √(var + ε) (1e-5, as RAE).
        decoder_path: RAE decoder checkpoint for native decoding (optional for training).
        decoder_patch_size: decoder output pixels per token (16 RAE, 14 Scale-RAE → resized to 16).
        decoder: decoder size overrides (tests: tiny), decoder_config_path: Scale-RAE's JSON.
        arch, arch_overrides: timm architecture and constructor overrides (tests: tiny width/depth).
        dtype: encoder/decoder weights dtype.
        require_weights: False builds random weights (tests); True raises MissingWeightsError when absent.
    """

    def __init__(
        self,
        encoder: str = "dinov2",
        path: str | None = None,
        channels: int = 768,
        down_factor: int = 16,
        native_size: int = 512,
        stats_path: str | None = None,
        stats_eps: float = 1e-5,
        decoder_path: str | None = None,
        decoder_patch_size: int = 16,
        decoder: dict | None = None,
        decoder_config_path: str | None = None,
        arch: str | None = None,
        arch_overrides: dict | None = None,
        dtype: str = "bfloat16",
        require_weights: bool = True,
        noise_form: str = "flow",
        name: str | None = None,
    ):
        super().__init__()
        if encoder not in ENCODERS:
            raise PiDConfigError(f"latent.encoder={encoder!r}; expected one of {sorted(ENCODERS)}")
        default_arch, self.num_special, mean, std, self.antialias = ENCODERS[encoder]
        self.encoder_kind = encoder
        self._name = name or f"rae_{encoder}"
        self._channels, self._down, self._noise_form = int(channels), int(down_factor), noise_form
        self.native_size = int(native_size)
        self.stats_eps = float(stats_eps)
        weights = _local_or_hub(path)
        if weights is None and require_weights:
            raise MissingWeightsError(
                f"RAE latent ({encoder})",
                "latent.path",
                f"timm weights of {arch or default_arch} (a .safetensors/.bin/.pth file)",
                source=(
                    "timm/vit_base_patch14_reg4_dinov2.lvd142m"
                    if encoder == "dinov2"
                    else "timm/ViT-SO400M-14-SigLIP2 (open_clip) / vit_so400m_patch14_siglip_224.v2_webli"
                ),
                path=path,
            )
        self.encoder = build_timm_encoder(arch or default_arch, weights, arch_overrides)
        if self.encoder.num_prefix_tokens != self.num_special:
            raise PiDConfigError(
                f"{arch or default_arch} has {self.encoder.num_prefix_tokens} special tokens; "
                f"the {encoder} RAE latent drops exactly {self.num_special}"
            )
        if self.encoder.embed_dim != self._channels:
            raise PiDConfigError(
                f"{arch or default_arch} is {self.encoder.embed_dim} wide but latent.channels={channels}"
            )
        self.enc_patch = int(self.encoder.patch_embed.patch_size[0])
        self.register_buffer("image_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

        # per-(C,H,W) statistics
        self.register_buffer("stats_mean", None)
        self.register_buffer("stats_var", None)
        if stats_path not in (None, ""):
            if not Path(str(stats_path)).expanduser().is_file():
                raise MissingWeightsError(
                    f"RAE latent ({encoder}) statistics",
                    "latent.stats_path",
                    f"a safetensors/.pt file with per-(C,H,W) 'mean' and 'var' of shape ({channels}, H, W); "
                    f"compute it with `{STATS_COMMAND.format(name=self._name)}` "
                    "or use the RAE authors' stat.pt",
                    path=stats_path,
                )
            self.load_stats(str(Path(str(stats_path)).expanduser()))

        # native decoder (optional)
        self.decoder_path = decoder_path
        self.decoder: RAEDecoder | None = None
        grid = self.native_size // self._down
        self._decoder_kwargs = decoder_kwargs(
            self._channels, grid, decoder_patch_size, decoder, decoder_config_path
        )
        if decoder_path not in (None, ""):
            if not Path(str(decoder_path)).expanduser().is_file():
                raise MissingWeightsError(
                    f"RAE decoder ({encoder})",
                    "latent.decoder_path",
                    "the RAE authors' decoder checkpoint (.pt), e.g. nyu-visionx/RAE-collections "
                    "decoders/dinov2/wReg_base/ViTXL_n08_i512/model.pt or Scale-RAE's decXL .pt",
                    path=decoder_path,
                )
            self.decoder = RAEDecoder(**self._decoder_kwargs)
            state = load_decoder_state(str(Path(str(decoder_path)).expanduser()))
            state.setdefault("decoder_pos_embed", self.decoder.decoder_pos_embed.data)
            self.decoder.load_state_dict(state, strict=True)
        self.encoder.to(getattr(torch, dtype))
        if self.decoder is not None:
            self.decoder.to(getattr(torch, dtype))
        self.freeze()

    # --- geometry ---------------------------------------------------------------------------------
    @property
    def channels(self) -> int:
        return self._channels

    @property
    def down_factor(self) -> int:
        return self._down

    @property
    def noise_form(self) -> str:
        return self._noise_form

    @property
    def name(self) -> str:
        return self._name

    def _dtype(self) -> torch.dtype:
        return self.encoder.patch_embed.proj.weight.dtype

    # --- statistics -------------------------------------------------------------------------------
    def load_stats(self, path: str) -> None:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            stats = load_file(path)
        else:
            stats = torch.load(path, map_location="cpu", weights_only=True)
        mean, var = stats.get("mean"), stats.get("var")
        if mean is None or var is None:
            raise PiDConfigError(f"{path} must hold 'mean' and 'var' tensors")
        mean, var = mean.float().reshape(-1, *mean.shape[-2:]), var.float().reshape(-1, *var.shape[-2:])
        if mean.shape[0] != self._channels or var.shape != mean.shape:
            raise PiDConfigError(
                f"{path}: statistics of shape {tuple(mean.shape)} / {tuple(var.shape)} do not fit a "
                f"{self._channels}-channel latent"
            )
        self.set_stats(mean, var)

    def set_stats(self, mean: torch.Tensor | None, var: torch.Tensor | None) -> None:
        """Install per-(C,H,W) statistics (``None`` removes them)."""
        self.stats_mean = None if mean is None else mean.float().clone()
        self.stats_var = None if var is None else var.float().clone()

    def _stats_for(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, var = self.stats_mean, self.stats_var
        if mean.shape[-2:] != z.shape[-2:]:  # another grid (aspect-ratio buckets): resample bilinearly
            mean = F.interpolate(mean[None], size=z.shape[-2:], mode="bilinear", align_corners=False)[0]
            var = F.interpolate(var[None], size=z.shape[-2:], mode="bilinear", align_corners=False)[0]
        return mean.to(z.device, torch.float32)[None], var.to(z.device, torch.float32)[None]

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        if self.stats_mean is None:
            return raw
        mean, var = self._stats_for(raw)
        return ((raw.float() - mean) / torch.sqrt(var + self.stats_eps)).to(raw.dtype)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        if self.stats_mean is None:
            return z
        mean, var = self._stats_for(z)
        return (z.float() * torch.sqrt(var + self.stats_eps) + mean).to(z.dtype)

    # --- the two maps -----------------------------------------------------------------------------
    def encoder_input_size(self, height: int, width: int) -> tuple[int, int]:
        """Pixels the encoder sees for an H×W image: (H/16·14, W/16·14) — 512 → 448, 256 → 224."""
        return height // self._down * self.enc_patch, width // self._down * self.enc_patch

    def encode_raw(self, images: torch.Tensor) -> torch.Tensor:
        b, _, height, width = images.shape
        h, w = height // self._down, width // self._down
        x = (images.float() + 1.0) / 2.0
        size = self.encoder_input_size(height, width)
        if x.shape[-2:] != size:
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=self.antialias)
        x = (x - self.image_mean) / self.image_std
        tokens = self.encoder.forward_features(x.to(self._dtype()))[:, self.num_special :]
        if tokens.shape[1] != h * w:
            raise RuntimeError(f"encoder returned {tokens.shape[1]} patch tokens for a {h}×{w} grid")
        return tokens.float().transpose(1, 2).reshape(b, self._channels, h, w)

    def decode_raw(self, raw: torch.Tensor) -> torch.Tensor:
        if self.decoder is None:
            raise MissingWeightsError(
                f"RAE decoder ({self.encoder_kind}) for native decoding",
                "latent.decoder_path",
                "the RAE authors' decoder checkpoint (.pt)",
                path=self.decoder_path,
            )
        h, w = raw.shape[-2:]
        x = self.decoder(raw.to(self._dtype())).float() * self.image_std + self.image_mean  # [0, 1]
        size = (h * self._down, w * self._down)
        if x.shape[-2:] != size:  # Scale-RAE: 14-pixel tokens → 16-pixel grid
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False)
        return x * 2.0 - 1.0

    def attach_decoder(self, decoder: RAEDecoder) -> None:
        """Use an already built decoder (tests, or a decoder loaded elsewhere)."""
        self.decoder = decoder.to(self._dtype()).requires_grad_(False).eval()
