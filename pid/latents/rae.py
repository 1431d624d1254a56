"""Representation-autoencoder (RAE) latents: frozen vision-encoder features as the latent (docs/method.md §5).

* **DINOv2-B with registers** (RAE, Zheng et al. 2025): a 512² image is resized (bicubic) to 448²,
  ImageNet-normalised and encoded by ViT-B/14 with 4 register tokens; the final LayerNorm is used
  *without* its affine parameters and the 5 special tokens (CLS + 4 registers) are dropped →
  768 × 32 × 32, i.e. a "virtual" 16× down factor.
* **SigLIP-2 So400M/14** (Scale-RAE): a 256² image is resized (bicubic, antialiased) to 224²,
  normalised with mean = std = 0.5, encoded by So400M/14 (no special tokens) and the final LayerNorm
  is used without affine → 1152 × 16 × 16 (also 16×); PiD uses it at sr_scale 8 (256 → 2048).

In general an H×W image gives an (H/16)×(W/16) grid: the encoder sees (H/16·14)×(W/16·14) pixels.
The encoders are built with **timm** (``vit_base_patch14_reg4_dinov2``, ``vit_so400m_patch14_siglip_224``)
from local weights: a timm/open_clip file or the original DINOv2 ``.pth`` (timm's checkpoint filters
convert them), or a Hugging Face folder (``facebook/dinov2-with-registers-base``,
``google/siglip2-so400m-patch14-224``; converted by :func:`hf_to_timm`); a ``hf-hub:`` id works for
users with internet. Positions are interpolated at run time (``dynamic_img_size``), as the RAE
authors' Hugging Face encoder does (timm resamples bicubic with antialiasing: tiny numeric
differences to HF's interpolation are possible at grids other than the checkpoint's).

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


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a file, or a Hugging Face folder (``model.safetensors``, shards, or ``.bin``)."""
    from safetensors.torch import load_file

    if path.is_dir():
        files = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
        if not files:
            raise MissingWeightsError(
                "RAE encoder",
                "latent.path",
                "model.safetensors (or pytorch_model.bin) in the folder",
                path=path,
            )
        state = {}
        for f in files:
            state.update(
                load_file(str(f))
                if f.suffix == ".safetensors"
                else torch.load(str(f), map_location="cpu", weights_only=True)
            )
        return state
    if path.suffix == ".safetensors":
        return load_file(str(path))
    return torch.load(str(path), map_location="cpu", weights_only=True)


def is_hf_layout(state: dict) -> bool:
    """Keys of Hugging Face ``Dinov2WithRegistersModel`` / ``SiglipVisionModel`` (not timm's, open_clip's)."""
    return any(
        k.split("embeddings.", 1)[-1] in ("patch_embeddings.projection.weight", "patch_embedding.weight")
        for k in state
        if "embeddings." in k
    )


def hf_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face DINOv2-with-registers / SigLIP vision weights → timm ``VisionTransformer`` names.

    q/k/v are concatenated into ``qkv``; for DINOv2 the CLS position is folded into the CLS token and
    the registers carry no position (timm's ``no_embed_class``, the same computation as HF's). SigLIP's
    attention-pooling head and text tower are dropped (PiD uses the patch tokens).
    """
    s = {
        k.removeprefix("dinov2.").removeprefix("vision_model."): v
        for k, v in state.items()
        if not k.startswith(("text_model.", "logit_"))
    }
    out: dict[str, torch.Tensor] = {}
    if "embeddings.position_embeddings" in s:  # DINOv2 (with registers)
        pos = s["embeddings.position_embeddings"]
        out["cls_token"] = s["embeddings.cls_token"] + pos[:, :1]
        out["pos_embed"] = pos[:, 1:]
        if "embeddings.register_tokens" in s:
            out["reg_token"] = s["embeddings.register_tokens"]
        prefix, pe = "encoder.layer.", "embeddings.patch_embeddings.projection"
        names = {
            "norm1": "norm1",
            "norm2": "norm2",
            "mlp.fc1": "mlp.fc1",
            "mlp.fc2": "mlp.fc2",
            "attention.output.dense": "attn.proj",
            "layer_scale1.lambda1": "ls1.gamma",
            "layer_scale2.lambda1": "ls2.gamma",
        }
        qkv = ("attention.attention.query", "attention.attention.key", "attention.attention.value")
        final = "layernorm"
    else:  # SigLIP / SigLIP-2 (fixed resolution)
        out["pos_embed"] = s["embeddings.position_embedding.weight"][None]
        prefix, pe = "encoder.layers.", "embeddings.patch_embedding"
        names = {
            "layer_norm1": "norm1",
            "layer_norm2": "norm2",
            "mlp.fc1": "mlp.fc1",
            "mlp.fc2": "mlp.fc2",
            "self_attn.out_proj": "attn.proj",
        }
        qkv = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
        final = "post_layernorm"
    for suffix in ("weight", "bias"):
        out[f"patch_embed.proj.{suffix}"] = s[f"{pe}.{suffix}"]
        if f"{final}.{suffix}" in s:
            out[f"norm.{suffix}"] = s[f"{final}.{suffix}"]
    depth = 1 + max(int(k[len(prefix) :].split(".")[0]) for k in s if k.startswith(prefix))
    for i in range(depth):
        src = f"{prefix}{i}."
        for a, b in names.items():
            for suffix in ("weight", "bias", ""):
                key = f"{src}{a}.{suffix}" if suffix else f"{src}{a}"
                if key in s:
                    out[f"blocks.{i}.{b}.{suffix}" if suffix else f"blocks.{i}.{b}"] = s[key]
        for suffix in ("weight", "bias"):
            if f"{src}{qkv[0]}.{suffix}" in s:
                out[f"blocks.{i}.attn.qkv.{suffix}"] = torch.cat([s[f"{src}{n}.{suffix}"] for n in qkv])
    return out


def build_timm_encoder(arch: str, weights: str | None, overrides: dict | None = None) -> nn.Module:
    """The timm ViT with final LayerNorm without affine; random weights when ``weights`` is None.

    ``weights``: a ``hf-hub:`` id, a timm/open_clip/original-DINOv2 file (timm's checkpoint filter
    converts it), or Hugging Face weights (a folder with ``config.json`` + ``model.safetensors``, as
    ``facebook/dinov2-with-registers-base`` and ``google/siglip2-so400m-patch14-224`` ship; converted here).
    """
    import timm

    kwargs = {"num_classes": 0, "dynamic_img_size": True, **(overrides or {})}
    if weights is None:
        model = timm.create_model(arch, pretrained=False, **kwargs)
    elif weights.startswith("hf-hub:"):
        model = timm.create_model(weights, pretrained=True, **kwargs)
    else:
        path = Path(weights)
        state = _read_state(path) if path.is_dir() or path.suffix in (".safetensors", ".bin") else None
        if state is not None and is_hf_layout(state):
            model = timm.create_model(arch, pretrained=False, **kwargs)
            missing, _ = model.load_state_dict(hf_to_timm(state), strict=False)
            missing = [k for k in missing if not k.startswith(("attn_pool.", "head.", "fc_norm."))]
            if missing:
                raise PiDConfigError(
                    f"{weights}: Hugging Face weights do not fit {arch}: missing {missing[:6]}"
                )
        else:
            file = next(iter(sorted(path.glob("*.safetensors"))), path) if path.is_dir() else path
            model = timm.create_model(
                arch, pretrained=True, pretrained_cfg_overlay={"file": str(file)}, **kwargs
            )
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
        self._build_encoder(encoder, path, channels, arch or default_arch, arch_overrides, require_weights)
        self.enc_patch = int(self.encoder.patch_embed.patch_size[0])
        self.register_buffer("image_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self._attach_stats(encoder, stats_path, channels)
        self._attach_decoder(encoder, decoder_path, decoder_patch_size, decoder, decoder_config_path)
        self.encoder.to(getattr(torch, dtype))
        if self.decoder is not None:
            self.decoder.to(getattr(torch, dtype))
        self.freeze()

    # --- construction -----------------------------------------------------------------------------
    def _build_encoder(
        self, encoder: str, path, channels, arch: str, arch_overrides: dict | None, require_weights: bool
    ) -> None:
        """``self.encoder`` from ``path`` (random when absent and not required), checked against the kind."""
        weights = _local_or_hub(path)
        if weights is None and require_weights:
            raise MissingWeightsError(
                f"RAE latent ({encoder})",
                "latent.path",
                f"timm weights of {arch} (a .safetensors/.bin/.pth file)",
                source=(
                    "timm/vit_base_patch14_reg4_dinov2.lvd142m"
                    if encoder == "dinov2"
                    else "timm/ViT-SO400M-14-SigLIP2 (open_clip) / vit_so400m_patch14_siglip_224.v2_webli"
                ),
                path=path,
            )
        self.encoder = build_timm_encoder(arch, weights, arch_overrides)
        if self.encoder.num_prefix_tokens != self.num_special:
            raise PiDConfigError(
                f"{arch} has {self.encoder.num_prefix_tokens} special tokens; "
                f"the {encoder} RAE latent drops exactly {self.num_special}"
            )
        if self.encoder.embed_dim != self._channels:
            raise PiDConfigError(f"{arch} is {self.encoder.embed_dim} wide but latent.channels={channels}")

    def _attach_stats(self, encoder: str, stats_path, channels) -> None:
        """The per-(C,H,W) statistics buffers, loaded from ``stats_path`` when given."""
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

    def _attach_decoder(
        self, encoder: str, decoder_path, decoder_patch_size: int, decoder, decoder_config_path
    ) -> None:
        """The optional native decoder, loaded from ``decoder_path`` when given."""
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

    def identity_tensors(self) -> dict[str, torch.Tensor]:
        """The encoder and the statistics: the native decoder does not change the latent."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("decoder.")}

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
