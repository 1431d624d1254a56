"""The RAE ViT decoder (Zheng et al., "Diffusion Transformers with Representation Autoencoders", 2025).

A ViT-MAE-style decoder that maps encoder patch tokens back to pixels: a linear embedding, a learned
CLS token, fixed 2-D sin-cos positions, ``L`` pre-norm transformer layers, a final LayerNorm and a
linear head predicting ``patch²·3`` values per token, unpatchified to an image in the *encoder's*
normalised pixel space (ImageNet mean/std for DINOv2, 0.5/0.5 for SigLIP).

Parameter names follow the RAE authors' ``GeneralDecoder`` (github.com/bytetriper/RAE,
``stage1/decoders``), which builds its layers from Hugging Face's ``ViTMAELayer``; so their released
checkpoints (``decoder_embed``, ``decoder_pos_embed``, ``decoder_layers.N.attention.attention.query``,
``…attention.output.dense``, ``…intermediate.dense``, ``…output.dense``, ``…layernorm_before/after``,
``decoder_norm``, ``decoder_pred``, ``trainable_cls_token``) load with ``strict=True``. Scale-RAE's
SigLIP-2 decoder has the same structure (it drops a placeholder CLS after the embedding, which
is the same computation since the embedding is per token).

Written here (no ``transformers`` dependency); the ViT-XL sizes are the defaults.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# RAE's ViT-XL decoder (configs/decoder/ViTXL): width 1152, 28 layers, 16 heads, MLP 4096, LN eps 1e-12.
VIT_XL = {
    "decoder_hidden_size": 1152,
    "decoder_num_hidden_layers": 28,
    "decoder_num_attention_heads": 16,
    "decoder_intermediate_size": 4096,
    "layer_norm_eps": 1e-12,
    "qkv_bias": True,
}


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """MAE 1-D sin-cos embedding: [sin(pos·ω), cos(pos·ω)], ω_k = 10000^(−k/(dim/2))."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = pos.reshape(-1, 1).double() * omega[None]
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_2d(dim: int, h: int, w: int, cls_token: bool = True) -> torch.Tensor:
    """MAE 2-D sin-cos positions for an h×w grid (row-major), first half the column, second half the row;
    a zero row first for the CLS token. Shape (h·w [+1], dim), float32."""
    if dim % 4:
        raise ValueError(f"sin-cos positions need a width divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    emb = torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()


class _SelfAttention(nn.Module):  # names of HF ViTMAESelfAttention
    def __init__(self, dim: int, heads: int, qkv_bias: bool):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim, bias=qkv_bias)
        self.key = nn.Linear(dim, dim, bias=qkv_bias)
        self.value = nn.Linear(dim, dim, bias=qkv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = (
            proj(x).view(b, n, self.heads, d // self.heads).transpose(1, 2)
            for proj in (self.query, self.key, self.value)
        )
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)


class _Attention(nn.Module):  # HF ViTMAEAttention: .attention (q/k/v) + .output.dense
    def __init__(self, dim: int, heads: int, qkv_bias: bool):
        super().__init__()
        self.attention = _SelfAttention(dim, heads, qkv_bias)
        self.output = nn.Module()
        self.output.dense = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output.dense(self.attention(x))


class ViTMAELayer(nn.Module):
    """Pre-norm block: x + Attn(LN(x)); x + MLP(LN(x)) with exact GELU (HF ``ViTMAELayer`` semantics)."""

    def __init__(self, dim: int, heads: int, mlp: int, eps: float = 1e-12, qkv_bias: bool = True):
        super().__init__()
        self.attention = _Attention(dim, heads, qkv_bias)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(dim, mlp)
        self.output = nn.Module()
        self.output.dense = nn.Linear(mlp, dim)
        self.layernorm_before = nn.LayerNorm(dim, eps=eps)
        self.layernorm_after = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.layernorm_before(x))
        return x + self.output.dense(F.gelu(self.intermediate.dense(self.layernorm_after(x))))


class RAEDecoder(nn.Module):
    """RAE ViT decoder: tokens (B, h·w, hidden_size) on an h×w grid → image (B, 3, h·patch, w·patch).

    Args:
        hidden_size: encoder width (768 DINOv2-B, 1152 SigLIP-2 So400M).
        grid: the token grid the decoder was trained on (32 for RAE DINOv2-B at 512 px, 16 for Scale-RAE).
        patch_size: pixels per token side of the output (16 for RAE, 14 for Scale-RAE).
        decoder_*: transformer sizes (ViT-XL by default).
    Other grids are decoded at their own size with the positions resampled (bicubic), so non-square
    latents decode without distortion (RAE itself resamples the *latent* to its training grid instead).
    """

    def __init__(
        self,
        hidden_size: int = 768,
        grid: int = 32,
        patch_size: int = 16,
        num_channels: int = 3,
        decoder_hidden_size: int = VIT_XL["decoder_hidden_size"],
        decoder_num_hidden_layers: int = VIT_XL["decoder_num_hidden_layers"],
        decoder_num_attention_heads: int = VIT_XL["decoder_num_attention_heads"],
        decoder_intermediate_size: int = VIT_XL["decoder_intermediate_size"],
        layer_norm_eps: float = 1e-12,
        qkv_bias: bool = True,
    ):
        super().__init__()
        self.grid, self.patch_size, self.num_channels = int(grid), int(patch_size), int(num_channels)
        dim = decoder_hidden_size
        self.decoder_embed = nn.Linear(hidden_size, dim)
        self.decoder_pos_embed = nn.Parameter(sincos_2d(dim, self.grid, self.grid)[None], requires_grad=False)
        self.decoder_layers = nn.ModuleList(
            [
                ViTMAELayer(
                    dim, decoder_num_attention_heads, decoder_intermediate_size, layer_norm_eps, qkv_bias
                )
                for _ in range(decoder_num_hidden_layers)
            ]
        )
        self.decoder_norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.decoder_pred = nn.Linear(dim, patch_size**2 * num_channels)
        self.trainable_cls_token = nn.Parameter(torch.zeros(1, 1, dim))

    def positions(self, h: int, w: int) -> torch.Tensor:
        """(1, 1 + h·w, dim) positions: the trained table, bicubic-resampled for another grid."""
        pos = self.decoder_pos_embed
        if (h, w) == (self.grid, self.grid):
            return pos
        cls, patch = pos[:, :1], pos[:, 1:]
        dim = pos.shape[-1]
        patch = patch.reshape(1, self.grid, self.grid, dim).permute(0, 3, 1, 2).float()
        patch = F.interpolate(patch, size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat([cls, patch.permute(0, 2, 3, 1).reshape(1, h * w, dim).to(pos.dtype)], dim=1)

    def unpatchify(self, logits: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, p, c = logits.shape[0], self.patch_size, self.num_channels
        x = logits.reshape(b, h, w, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, c, h * p, w * p)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """latent (B, C, h, w) → image (B, 3, h·patch, w·patch) in the encoder's normalised pixel space."""
        b, _, h, w = latent.shape
        x = self.decoder_embed(latent.flatten(2).transpose(1, 2))
        x = torch.cat([self.trainable_cls_token.expand(b, -1, -1).to(x.dtype), x], dim=1)
        x = x + self.positions(h, w).to(x.dtype)
        for layer in self.decoder_layers:
            x = layer(x)
        logits = self.decoder_pred(self.decoder_norm(x))[:, 1:]
        return self.unpatchify(logits, h, w)


def decoder_kwargs(
    hidden_size: int,
    grid: int,
    patch_size: int,
    overrides: dict | None = None,
    config_path: str | None = None,
) -> dict:
    """Decoder sizes: ViT-XL defaults ← a ViTMAE-style JSON (Scale-RAE ships one) ← explicit overrides."""
    kwargs = dict(VIT_XL, hidden_size=hidden_size, grid=grid, patch_size=patch_size)
    if config_path:
        cfg = json.loads(Path(config_path).read_text())
        kwargs.update({k: cfg[k] for k in (*VIT_XL, "patch_size", "num_channels") if k in cfg})
    kwargs.update(overrides or {})
    return kwargs


def load_decoder_state(path: str) -> dict[str, torch.Tensor]:
    """A released decoder state dict (``.pt``/``.pth`` weights-only, or ``.safetensors``); unwraps
    ``{"model": …}``/``{"state_dict": …}``/``{"ema": …}`` and a ``decoder.`` prefix."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("ema", "model", "state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if any(k.startswith("decoder.decoder_") for k in state):
        state = {k[len("decoder.") :]: v for k, v in state.items() if k.startswith("decoder.")}
    return state


def grid_of(num_tokens: int) -> int:
    g = math.isqrt(num_tokens)
    if g * g != num_tokens:
        raise ValueError(f"{num_tokens} decoder positions are not a square grid")
    return g
