"""Embedders and transformer blocks of the dual-level PixelDiT.

Patch level: ``MMDiTBlock`` - joint text+image attention (MM-DiT), separate
weights per stream, adaLN on the timestep for both streams.
Pixel level: ``PiTBlock`` - one ``pixel_dim``-d token per pixel, modulated per
pixel by its patch token (pixel-wise adaLN); attention runs on patch-compacted
tokens: the p*p*pixel_dim features of a patch -> one ``attn_dim`` token.

Module/parameter names mirror NVIDIA's ``pixeldit_official.py``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from pid.nn.layers import (
    FeedForward,
    Mlp,
    RMSNorm,
    RopeFreqs,
    RotaryAttention,
    apply_rope,
    attention,
    modulate,
    sincos_2d_axes,
    split_heads,
)

# ---------------------------------------------------------------------------
# Embedders
# ---------------------------------------------------------------------------


class PatchTokenEmbedder(nn.Module):
    """Linear projection (+ optional RMSNorm): flattened patches -> patch tokens, or text -> text tokens."""

    def __init__(self, in_dim: int, hidden_size: int, norm: bool = False):
        super().__init__()
        self.proj = nn.Linear(in_dim, hidden_size)
        self.norm = RMSNorm(hidden_size) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class PixelTokenEmbedder(nn.Module):
    """Per-pixel linear embedding + full-image 2-D sin/cos position, grouped by patch.

    (B, C, H, W) -> (B * L, p*p, pixel_dim) with L = (H/p)(W/p) patches in
    row-major order and the p*p pixels of each patch in row-major order.
    """

    def __init__(self, in_channels: int, pixel_dim: int):
        super().__init__()
        self.pixel_dim = pixel_dim
        self.proj = nn.Linear(in_channels, pixel_dim)

    def forward(self, x: torch.Tensor, patch_size: int, row_offset: int = 0) -> torch.Tensor:
        """``row_offset``: the image row of x's first row (a context-parallel rank's slice of the image),
        so the positions are the whole image's."""
        B, _, H, W = x.shape
        p, D = patch_size, self.pixel_dim
        tokens = self.proj(x.permute(0, 2, 3, 1))  # (B, H, W, D)
        emb_x, emb_y = sincos_2d_axes(D, H + row_offset, W, device=x.device)
        emb_y = emb_y[row_offset:]
        pos = torch.cat(
            [emb_x.to(x.dtype)[None].expand(H, W, D // 2), emb_y.to(x.dtype)[:, None].expand(H, W, D // 2)],
            dim=-1,
        )
        tokens = tokens + pos
        tokens = tokens.view(B, H // p, p, W // p, p, D).permute(0, 1, 3, 2, 4, 5)
        return tokens.reshape(B * (H // p) * (W // p), p * p, D)


class FinalLayer(nn.Module):
    """RMSNorm -> Linear: pixel token -> RGB velocity."""

    def __init__(self, hidden_size: int, out_channels: int):
        super().__init__()
        self.norm = RMSNorm(hidden_size)
        self.linear = nn.Linear(hidden_size, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(x))


# ---------------------------------------------------------------------------
# Patch level: MM-DiT block
# ---------------------------------------------------------------------------


class MMDiTJointAttention(nn.Module):
    """Joint attention over the sequence [text; image] with per-stream QKV/out projections and QK-norm.

    Image queries/keys get 2-D RoPE, text queries/keys 1-D RoPE. With ``y=None``
    this is plain image self-attention (the text branch is not run).
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden_size {dim} is not divisible by num_groups={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv_x = nn.Linear(dim, 3 * dim, bias=False)
        self.qkv_y = nn.Linear(dim, 3 * dim, bias=False)
        self.q_norm_x = RMSNorm(self.head_dim)
        self.k_norm_x = RMSNorm(self.head_dim)
        self.q_norm_y = RMSNorm(self.head_dim)
        self.k_norm_y = RMSNorm(self.head_dim)
        self.proj_x = nn.Linear(dim, dim)
        self.proj_y = nn.Linear(dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None,
        rope_img: RopeFreqs,
        rope_txt: RopeFreqs | None = None,
        attn_mask: torch.Tensor | None = None,
        text_out: bool = True,
        context=None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``context`` (:class:`pid.parallel.context.ContextParallel`): x holds this rank's slice of the
        image tokens; image keys/values are gathered over the group, text is replicated (whole on every
        rank), so out_x is this rank's slice and out_y the whole text's."""
        B, Nx, D = x.shape
        qx, kx, vx = split_heads(self.qkv_x(x), self.num_heads)
        qx = apply_rope(self.q_norm_x(qx), rope_img)
        kx = apply_rope(self.k_norm_x(kx), rope_img)
        if context is not None:
            kx, vx = context.gather_kv(kx, vx)
        q, k, v = qx, kx, vx
        Ny = 0
        if y is not None:
            Ny = y.shape[1]
            qy, ky, vy = split_heads(self.qkv_y(y), self.num_heads)
            qy, ky = self.q_norm_y(qy), self.k_norm_y(ky)
            if rope_txt is not None:
                qy, ky = apply_rope(qy, rope_txt), apply_rope(ky, rope_txt)
            q, k, v = torch.cat([qy, qx], 1), torch.cat([ky, kx], 1), torch.cat([vy, vx], 1)
        out = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask).transpose(1, 2)
        out_x = self.proj_x(out[:, Ny:].reshape(B, Nx, D))
        out_y = self.proj_y(out[:, :Ny].reshape(B, Ny, D)) if (y is not None and text_out) else None
        return out_x, out_y


class MMDiTBlock(nn.Module):
    """MM-DiT block (official ``MMDiTBlockT2I``).

    For each stream s in {x (image), y (text)}, with c = silu(t_emb):
        (shift, scale, gate)_{msa,mlp} = adaLN_modulation_s(c)
        s = s + gate_msa * Attn_joint(modulate(RMSNorm(s), shift_msa, scale_msa))
        s = s + gate_mlp * SwiGLU(modulate(RMSNorm(s), shift_mlp, scale_mlp))
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm_x1 = RMSNorm(hidden_size)
        self.norm_y1 = RMSNorm(hidden_size)
        self.attn = MMDiTJointAttention(hidden_size, num_heads)
        self.norm_x2 = RMSNorm(hidden_size)
        self.norm_y2 = RMSNorm(hidden_size)
        mlp_hidden = int(hidden_size * mlp_ratio)
        self.mlp_x = FeedForward(hidden_size, mlp_hidden)
        self.mlp_y = FeedForward(hidden_size, mlp_hidden)
        self.adaLN_modulation_img = nn.Sequential(nn.Linear(hidden_size, 6 * hidden_size))
        self.adaLN_modulation_txt = nn.Sequential(nn.Linear(hidden_size, 6 * hidden_size))

    def freeze_text_output(self) -> None:
        """In the last block the updated text stream is never read: keep its output params out of training."""
        for module in (self.attn.proj_y, self.norm_y2, self.mlp_y):
            module.requires_grad_(False)

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None,
        c: torch.Tensor,
        rope_img: RopeFreqs,
        rope_txt: RopeFreqs | None = None,
        attn_mask: torch.Tensor | None = None,
        text_out: bool = True,
        context=None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation_img(c).chunk(
            6, -1
        )
        y_norm = None
        if y is not None:
            mod_y = self.adaLN_modulation_txt(c).chunk(6, -1)
            y_norm = modulate(self.norm_y1(y), mod_y[0], mod_y[1])
        x_norm = modulate(self.norm_x1(x), shift_msa, scale_msa)
        attn_x, attn_y = self.attn(x_norm, y_norm, rope_img, rope_txt, attn_mask, text_out=text_out,
                                   context=context)
        x = x + gate_msa * attn_x
        x = x + gate_mlp * self.mlp_x(modulate(self.norm_x2(x), shift_mlp, scale_mlp))
        if attn_y is None:
            return x, None
        y = y + mod_y[2] * attn_y
        y = y + mod_y[5] * self.mlp_y(modulate(self.norm_y2(y), mod_y[3], mod_y[4]))
        return x, y


# ---------------------------------------------------------------------------
# Pixel level: PiT block
# ---------------------------------------------------------------------------


class PiTBlock(nn.Module):
    """Pixel-token block with pixel-wise adaLN and patch-compacted attention.

    Pixel tokens u (B*L, p^2, d) of each patch are conditioned on that patch's
    token s (B*L, D): adaLN_modulation(s) gives a separate (shift, scale, gate)
    for every pixel of the patch (6 * d * p^2 outputs). Attention:
        a = compress_to_attn(flatten(modulate(RMSNorm(u))))   (B, L, attn_dim)
        a = RotaryAttention(a)  across patches, 2-D RoPE
        u = u + gate_msa * expand_from_attn(a)                 back to (B*L, p^2, d)
        u = u + gate_mlp * MLP(modulate(RMSNorm(u)))           per pixel
    """

    def __init__(
        self,
        pixel_dim: int,
        patch_hidden_size: int,
        patch_size: int,
        attn_dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        self.pixel_dim = pixel_dim
        self.patch_size = patch_size
        self.attn_dim = attn_dim
        p2 = patch_size * patch_size
        self.compress_to_attn = nn.Linear(p2 * pixel_dim, attn_dim)
        self.expand_from_attn = nn.Linear(attn_dim, p2 * pixel_dim)
        self.norm1 = RMSNorm(pixel_dim)
        self.attn = RotaryAttention(attn_dim, num_heads)
        self.norm2 = RMSNorm(pixel_dim)
        self.mlp = Mlp(pixel_dim, mlp_ratio)
        self.adaLN_modulation = nn.Sequential(nn.Linear(patch_hidden_size, 6 * pixel_dim * p2))

    def forward(
        self, u: torch.Tensor, s_cond: torch.Tensor, batch_size: int, rope: RopeFreqs, context=None
    ) -> torch.Tensor:
        """``context``: u holds the pixel tokens of this context-parallel rank's patches; the compacted
        keys/values are gathered over its group."""
        BL, P2, d = u.shape
        L = BL // batch_size
        mod = self.adaLN_modulation(s_cond).view(BL, P2, 6 * d)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, -1)
        a = modulate(self.norm1(u), shift_msa, scale_msa).reshape(batch_size, L, P2 * d)
        a = self.attn(self.compress_to_attn(a), rope, context=context)
        a = self.expand_from_attn(a).view(BL, P2, d)
        u = u + gate_msa * a
        u = u + gate_mlp * self.mlp(modulate(self.norm2(u), shift_mlp, scale_mlp))
        return u
