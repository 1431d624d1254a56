"""Building blocks shared by the PixelDiT backbone and the PiD latent adapter.

Conventions follow NVIDIA's PixelDiT-T2I so that official checkpoints load by a
key rename (parameter names such as ``weight``, ``w1/w2/w3``, ``mlp.0`` are kept):

* RMSNorm computed in float32, learned per-channel gain ``weight``;
* SwiGLU feed-forward whose inner width is ``int(2/3 * hidden_dim)``;
* sinusoidal timestep features ``[cos, sin]`` with ``max_period = 10`` (the
  network sees ``t * 1000``, so the effective period range matches DiT's);
* 2-D rotary embedding over *interpolated* positions: a grid of any size spans
  the same range ``[0, 16]`` on each axis; optionally the RoPE base is rescaled
  per axis with the NTK-aware rule relative to a reference grid.

All tensors use the (B, N, heads, head_dim) layout for RoPE and
(B, heads, N, head_dim) for attention.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

RopeFreqs = tuple[torch.Tensor, torch.Tensor]  # (cos, sin), each (N, head_dim // 2)

ROPE_MODES = ("original", "ntk_aware")


# ---------------------------------------------------------------------------
# Normalisation, MLPs, modulation
# ---------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """RMSNorm(x) = weight * x / sqrt(mean(x^2) + eps), statistics in float32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class FeedForward(nn.Module):
    """SwiGLU MLP: w2(silu(w1 x) * w3 x).

    ``hidden_dim`` is the nominal width ``mlp_ratio * dim``; as in LLaMA the
    gated inner width is ``int(2 * hidden_dim / 3)`` so the parameter count
    matches a plain GELU MLP of width ``hidden_dim`` (1536 * 4 -> 4096).
    """

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        inner = int(2 * hidden_dim / 3)
        self.w1 = nn.Linear(dim, inner, bias=False)
        self.w3 = nn.Linear(dim, inner, bias=False)
        self.w2 = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Mlp(nn.Module):
    """Plain GELU MLP (fc1 -> GELU -> fc2), used on the 16-d pixel tokens."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x * (1 + scale) + shift."""
    return x * (1 + scale) + shift


# ---------------------------------------------------------------------------
# Timestep and absolute position embeddings
# ---------------------------------------------------------------------------


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10.0) -> torch.Tensor:
    """Sinusoidal features [cos(t w_k), sin(t w_k)], w_k = max_period^(-k / (dim/2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """t -> MLP(sinusoid(t)); ``mlp`` keeps the official Sequential layout (mlp.0, mlp.2)."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256, max_period: float = 10.0):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.max_period = max_period
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = timestep_embedding(t, self.frequency_embedding_size, self.max_period)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """1-D sin/cos embedding [sin(p w_k), cos(p w_k)], w_k = 10000^(-k/(dim/2)), in float64."""
    half = dim // 2
    omega = 1.0 / (10000 ** (torch.arange(half, dtype=torch.float64, device=pos.device) / half))
    out = pos.double()[:, None] * omega[None]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d_axes(dim: int, height: int, width: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-axis halves of the 2-D sin/cos embedding: (W, dim/2) for x and (H, dim/2) for y.

    The full embedding at pixel (i, j) is ``cat([emb_x[j], emb_y[i]])``; keeping
    the axes separate avoids materialising an (H*W, dim) float64 table at 4K.
    """
    emb_x = sincos_1d(dim // 2, torch.arange(width, device=device))
    emb_y = sincos_1d(dim // 2, torch.arange(height, device=device))
    return emb_x, emb_y


# ---------------------------------------------------------------------------
# Rotary position embedding
# ---------------------------------------------------------------------------


def ntk_theta(theta: float, grid: int, ref_grid: int, axis_dim: int) -> float:
    """NTK-aware base: theta * (grid / ref_grid)^(axis_dim / (axis_dim - 2)); unchanged at the reference."""
    if axis_dim <= 2 or grid == ref_grid:
        return theta
    return theta * (grid / ref_grid) ** (axis_dim / (axis_dim - 2))


def rope_2d(
    head_dim: int,
    grid_h: int,
    grid_w: int,
    *,
    theta: float = 10000.0,
    span: float = 16.0,
    ref_grid: tuple[int, int] | None = None,
    window: tuple[int, int, int, int] | None = None,
    device=None,
) -> RopeFreqs:
    """2-D RoPE angles for a (grid_h, grid_w) token grid, row-major.

    Positions are ``linspace(0, span, n)`` on each axis (position interpolation:
    every resolution covers the same range). Rotation pair k uses axis x for
    even k and y for odd k, with frequency theta_axis^(-4 floor(k/2) / head_dim).
    ``ref_grid=(h_ref, w_ref)`` enables NTK-aware scaling: per axis,
    theta_axis = theta * (n / n_ref)^(d / (d - 2)) with d = head_dim / 2.
    ``window=(top, left, h, w)``: only the rows top..top+h-1 and columns left..left+w-1 of the
    (grid_h, grid_w) grid, (h·w, head_dim // 2) — the global positions of a tile (tiled decoding,
    :mod:`pid.tiling`); the values equal those rows of the whole grid's table.
    """
    axis_dim = head_dim // 2
    if ref_grid is None:
        theta_h = theta_w = theta
    else:
        theta_h = ntk_theta(theta, grid_h, ref_grid[0], axis_dim)
        theta_w = ntk_theta(theta, grid_w, ref_grid[1], axis_dim)
    exponent = torch.arange(0, head_dim, 4, device=device)[: head_dim // 4].float() / head_dim
    freqs_w = 1.0 / (theta_w**exponent)
    freqs_h = 1.0 / (theta_h**exponent)
    pos_h = torch.linspace(0, span, grid_h, device=device)
    pos_w = torch.linspace(0, span, grid_w, device=device)
    if window is not None:
        top, left, win_h, win_w = window
        if top < 0 or left < 0 or win_h < 1 or win_w < 1 or top + win_h > grid_h or left + win_w > grid_w:
            raise ValueError(f"RoPE window (top, left, h, w)={tuple(window)} is not inside the "
                             f"{grid_h}x{grid_w} grid")
        pos_h, pos_w = pos_h[top:top + win_h], pos_w[left:left + win_w]
    y_pos, x_pos = torch.meshgrid(pos_h, pos_w, indexing="ij")
    ang_x = torch.outer(x_pos.reshape(-1), freqs_w)
    ang_y = torch.outer(y_pos.reshape(-1), freqs_h)
    angles = torch.stack([ang_x, ang_y], dim=-1).reshape(y_pos.numel(), -1)  # interleave x, y pairs
    return torch.cos(angles), torch.sin(angles)


def rope_1d(head_dim: int, length: int, *, theta: float = 10000.0, device=None) -> RopeFreqs:
    """1-D RoPE angles for text positions 0..length-1: pos * theta^(-2k / head_dim)."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))
    angles = torch.arange(length, device=device).float()[:, None] * freqs[None]
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x: torch.Tensor, freqs: RopeFreqs) -> torch.Tensor:
    """Rotate adjacent channel pairs (x_2k, x_2k+1) of x (B, N, heads, head_dim) in float32."""
    cos, sin = freqs
    cos = cos[None, :, None, :].to(x.device)
    sin = sin[None, :, None, :].to(x.device)
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    re, im = pairs[..., 0], pairs[..., 1]
    out = torch.stack([re * cos - im * sin, re * sin + im * cos], dim=-1).flatten(3)
    return out.type_as(x)


# ---------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over (B, heads, N, d) tensors; boolean mask True = attend."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


def split_heads(qkv: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, N, 3*D) -> three (B, N, heads, head_dim) tensors."""
    B, N, three_d = qkv.shape
    qkv = qkv.view(B, N, 3, num_heads, three_d // (3 * num_heads))
    return qkv.unbind(dim=2)


class RotaryAttention(nn.Module):
    """Self-attention with QK RMSNorm and 2-D RoPE (the PiT block's patch-level attention)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_norm = RMSNorm(self.head_dim)
        self.k_norm = RMSNorm(self.head_dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: RopeFreqs, context=None) -> torch.Tensor:
        """x (B, N, dim), rope for its N tokens → (B, N, dim).

        ``context``: a :class:`pid.parallel.context.ContextParallel` when x is this rank's slice of a
        longer sequence; keys and values are then gathered over its group (queries stay local).
        """
        B, N, D = x.shape
        q, k, v = split_heads(self.qkv(x), self.num_heads)
        q = apply_rope(self.q_norm(q), rope)
        k = apply_rope(self.k_norm(k), rope)
        if context is not None:
            k, v = context.gather_kv(k, v)
        out = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(out.transpose(1, 2).reshape(B, N, D))
