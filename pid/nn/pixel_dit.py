"""PixelDiT: the dual-level pixel-space diffusion transformer used as PiD's backbone.

    x (B, 3, H, W), t, text y
      |- s_embedder: 16x16 patches -> patch tokens h (B, L, D)
      |- patch_blocks[0..patch_depth): MM-DiT, joint attention with text  <- PiD injects here
      |- s = silu(t_emb + h): per-patch conditioning of the pixel level
      |- pixel_embedder: one pixel_dim token per pixel
      |- pixel_blocks: PiT (pixel-wise adaLN, patch-compacted attention)
      '- final_layer -> velocity v = eps - x0, same shape as x

Rectified flow with t = 1 pure noise: x_t = (1 - t) x0 + t eps. ``forward``
takes t in [0, 1]; like the official code the embedder sees t * 1000.

Parameter names mirror NVIDIA's ``PixDiT_T2I`` (pixel_embedder, s_embedder,
t_embedder, y_embedder, y_pos_embedding, patch_blocks, pixel_blocks,
final_layer), so an official checkpoint loads after dropping unused keys.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from pid.diffusion import flow
from pid.nn.blocks import FinalLayer, MMDiTBlock, PatchTokenEmbedder, PiTBlock, PixelTokenEmbedder
from pid.nn.layers import ROPE_MODES, RopeFreqs, TimestepEmbedder, rope_1d, rope_2d

#: What the final layer outputs: the velocity ε − x₀ (PixelDiT, PiD) or the clean image x₀ (JiT).
PREDICTIONS = ("v", "x0", "edm")

# inject(block_idx, tokens) -> tokens, called before patch block `block_idx`
InjectFn = Callable[[int, torch.Tensor], torch.Tensor]


def network_patch_size(module, default: int = 16) -> int:
    """Pixels per patch side of the PixelDiT in ``module.net`` (or its ``backbone``); ``default`` if none."""
    net = getattr(module, "net", None)
    for obj in (net, getattr(net, "backbone", None)):
        p = getattr(obj, "patch_size", None)
        if isinstance(p, int):
            return p
    return default


@dataclass
class PatchContext:
    """Everything the patch and pixel levels share for one forward pass."""

    tokens: torch.Tensor  # (B, L, D) image patch tokens
    text: torch.Tensor | None  # (B, Ltxt, D) text tokens, or None
    t_emb: torch.Tensor  # (B, 1, D)
    cond: torch.Tensor  # (B, 1, D) silu(t_emb), input of every adaLN
    rope_img: RopeFreqs
    rope_txt: RopeFreqs | None
    attn_mask: torch.Tensor | None  # (B, 1, 1, Ltxt + L) bool, True = attend
    grid: tuple[int, int]  # (Hp, Wp) patch grid (under context parallelism: this rank's rows of it)
    context: Any = None  # pid.parallel.context.ContextParallel, or None


class PixelDiT(nn.Module):
    """Dual-level pixel DiT (PixelDiT-T2I).

    Args:
        in_channels: image channels (input and output).
        hidden_size: patch-token width D.
        num_groups: attention heads of the patch blocks.
        pixel_hidden_size: per-pixel token width d.
        pixel_attn_hidden_size: width of the compacted patch token in PiT attention (default D).
        pixel_num_groups: heads of the PiT attention (default num_groups).
        patch_depth, pixel_depth: number of MM-DiT and PiT blocks.
        patch_size: pixels per patch side; image sides must be multiples of it.
        txt_embed_dim, txt_max_length: text encoder width and the longest text used (longer is cut).
        rope_mode: "original" or "ntk_aware" (NTK-scaled RoPE base relative to rope_ref_h/w).
        rope_ref_h, rope_ref_w: reference resolution in pixels for "ntk_aware".
        mlp_ratio: nominal MLP ratio of the patch blocks (SwiGLU inner width = int(2/3 * ratio * D)).
        pixel_mlp_ratio: GELU-MLP ratio of the pixel tokens.
        use_text_rope, text_rope_theta: 1-D RoPE on the text tokens.
        timestep_scale: the embedder sees t * timestep_scale (1000 in PixelDiT).
        prediction: what the output layer predicts, always returned as the velocity (:meth:`as_velocity`):
            "v" (PixelDiT and the PiD releases), "x0" (JiT, with ``x0_t_min``) or "edm" (EDM
            preconditioning with ``sigma_data``, docs/method.md Eq. (5a),
            :func:`pid.diffusion.flow.v_from_edm_output`).
    """

    def __init__(
        self,
        in_channels: int = 3,
        hidden_size: int = 1536,
        num_groups: int = 24,
        pixel_hidden_size: int = 16,
        pixel_attn_hidden_size: int | None = None,
        pixel_num_groups: int | None = None,
        patch_depth: int = 14,
        pixel_depth: int = 2,
        patch_size: int = 16,
        txt_embed_dim: int = 2304,
        txt_max_length: int = 300,
        rope_mode: str = "original",
        rope_ref_h: int = 1024,
        rope_ref_w: int = 1024,
        mlp_ratio: float = 4.0,
        pixel_mlp_ratio: float = 4.0,
        use_text_rope: bool = True,
        text_rope_theta: float = 10000.0,
        timestep_scale: float = 1000.0,
        prediction: str = "v",
        x0_t_min: float = 0.05,
        sigma_data: float = 0.5,
    ):
        super().__init__()
        self._check_args(prediction, rope_mode, pixel_depth, patch_size, rope_ref_h, rope_ref_w)
        self._check_prediction_args(x0_t_min, sigma_data)
        self.in_channels = in_channels
        self.out_channels = in_channels
        self.prediction = prediction
        self.x0_t_min = float(x0_t_min)
        self.sigma_data = float(sigma_data)
        self.hidden_size = hidden_size
        self.num_groups = num_groups
        self.pixel_hidden_size = pixel_hidden_size
        self.pixel_attn_hidden_size = pixel_attn_hidden_size or hidden_size
        self.pixel_num_groups = pixel_num_groups or num_groups
        self.patch_depth = patch_depth
        self.pixel_depth = pixel_depth
        self.patch_size = patch_size
        self.txt_embed_dim = txt_embed_dim
        self.txt_max_length = txt_max_length
        self.rope_mode = rope_mode
        self.rope_ref_grid = (rope_ref_h // patch_size, rope_ref_w // patch_size)
        self.use_text_rope = use_text_rope
        self.text_rope_theta = text_rope_theta
        self.timestep_scale = timestep_scale

        self.pixel_embedder = PixelTokenEmbedder(in_channels, pixel_hidden_size)
        self.s_embedder = PatchTokenEmbedder(in_channels * patch_size**2, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = PatchTokenEmbedder(txt_embed_dim, hidden_size, norm=True)
        self.y_pos_embedding = nn.Parameter(torch.randn(1, txt_max_length, hidden_size))

        self.patch_blocks = nn.ModuleList(
            [MMDiTBlock(hidden_size, num_groups, mlp_ratio) for _ in range(patch_depth)]
        )
        self.pixel_blocks = nn.ModuleList(
            [
                PiTBlock(
                    pixel_hidden_size,
                    hidden_size,
                    patch_size,
                    self.pixel_attn_hidden_size,
                    self.pixel_num_groups,
                    pixel_mlp_ratio,
                )
                for _ in range(pixel_depth)
            ]
        )
        self.final_layer = FinalLayer(pixel_hidden_size, self.out_channels)
        self.initialize_weights()
        if patch_depth:
            self.patch_blocks[-1].freeze_text_output()

    @staticmethod
    def _check_prediction_args(x0_t_min: float, sigma_data: float) -> None:
        for name, value in (("x0_t_min", x0_t_min), ("sigma_data", sigma_data)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, got {value!r}")
        if not 0.0 < float(x0_t_min) <= 1.0:
            raise ValueError(f"x0_t_min must be in (0, 1] (v = (x_t − x̂₀)/max(t, x0_t_min)), got {x0_t_min}")
        if not 0.0 < float(sigma_data) < math.inf:
            raise ValueError("sigma_data must be a positive data standard deviation (0.5 for images in "
                             f"[-1, 1]), got {sigma_data}")

    @staticmethod
    def _check_args(
        prediction: str, rope_mode: str, pixel_depth: int, patch_size: int, rope_ref_h: int, rope_ref_w: int
    ) -> None:
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if rope_mode not in ROPE_MODES:
            raise ValueError(f"rope_mode must be one of {ROPE_MODES}, got {rope_mode!r}")
        if pixel_depth < 1:
            raise ValueError("PixelDiT needs pixel_depth >= 1 (the pixel level produces the output)")
        if rope_mode == "ntk_aware" and (rope_ref_h % patch_size or rope_ref_w % patch_size):
            raise ValueError(
                f"rope_ref_h={rope_ref_h} and rope_ref_w={rope_ref_w} must be multiples of "
                f"patch_size={patch_size}"
            )

    def initialize_weights(self) -> None:
        """PixelDiT init: xavier patch embedder, N(0, 0.02) timestep MLP, zero output layer, rest default.

        The zero output layer makes a freshly built network predict v = 0;
        real use starts from a pretrained prior.
        """
        nn.init.xavier_uniform_(self.s_embedder.proj.weight)
        nn.init.zeros_(self.s_embedder.proj.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    # ------------------------------------------------------------------ helpers

    def patch_grid(self, height: int, width: int) -> tuple[int, int]:
        """(Hp, Wp) for an image size; raises ValueError unless both sides are multiples of patch_size."""
        p = self.patch_size
        if height % p or width % p or height <= 0 or width <= 0:
            raise ValueError(
                f"image size {height}x{width} (HxW) is not a positive multiple of patch_size={p}; "
                f"use sides divisible by {p} (e.g. {max(p, height // p * p)}x{max(p, width // p * p)})"
            )
        return height // p, width // p

    def image_rope(self, grid_h: int, grid_w: int, head_dim: int, device,
                   rope_window: tuple[int, int, int, int] | None = None) -> RopeFreqs:
        """RoPE of a (grid_h, grid_w) patch grid; ``rope_window=(Gh, Gw, top, left)``: the grid is the
        window at (top, left) of a (Gh, Gw) global grid, whose positions (and NTK scaling) it takes."""
        ref = self.rope_ref_grid if self.rope_mode == "ntk_aware" else None
        if rope_window is None:
            return rope_2d(head_dim, grid_h, grid_w, ref_grid=ref, device=device)
        gh, gw, top, left = (int(v) for v in rope_window)
        return rope_2d(head_dim, gh, gw, ref_grid=ref, window=(top, left, grid_h, grid_w), device=device)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, L, C*p*p), features ordered (c, i, j) like F.unfold."""
        B, C, H, W = x.shape
        p = self.patch_size
        x = x.view(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(B, (H // p) * (W // p), C * p * p)

    def unpatchify_pixels(self, u: torch.Tensor, batch_size: int, grid: tuple[int, int]) -> torch.Tensor:
        """(B*L, p*p, C) pixel outputs -> (B, C, H, W)."""
        (Hp, Wp), p = grid, self.patch_size
        C = u.shape[-1]
        u = u.view(batch_size, Hp, Wp, p, p, C).permute(0, 5, 1, 3, 2, 4)
        return u.reshape(batch_size, C, Hp * p, Wp * p)

    def context_rows(self, x: torch.Tensor, context, rope_window=None):
        """This context-parallel rank's rows of the image x (B, C, H, W) and their place in the grid.

        Returns (x[:, :, rows], rope_window=(Hp, Wp, first patch row, 0)): the rank keeps patch rows
        [r·Hp/size, (r+1)·Hp/size) (:meth:`pid.parallel.context.ContextParallel.rows`); the window gives
        its tokens the whole grid's RoPE positions. With ``context=None``: (x, rope_window) unchanged.

        Raises:
            ValueError: Hp is not a multiple of the group size (naming the sizes that work), or a
                ``rope_window`` (a tile) is combined with context parallelism.
        """
        if context is None:
            return x, rope_window
        if rope_window is not None:
            raise ValueError("context parallelism splits the whole image: it cannot be combined with a "
                             "rope_window (a tile)")
        grid = self.patch_grid(*x.shape[-2:])
        r0, r1 = context.rows(grid[0], self.patch_size)
        p = self.patch_size
        return x[:, :, r0 * p:r1 * p], (grid[0], grid[1], r0, 0)

    @staticmethod
    def tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, L, D) patch tokens -> (B, D, Hp, Wp) feature map."""
        B, _, D = tokens.shape
        return tokens.transpose(1, 2).reshape(B, D, *grid)

    # ------------------------------------------------------------------ forward stages

    def embed(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor | None = None,
        y_mask: torch.Tensor | None = None,
        rope_window: tuple[int, int, int, int] | None = None,
        context=None,
    ) -> PatchContext:
        """Patch tokens, timestep conditioning, text tokens, RoPE tables and attention mask
        (``rope_window``: see :meth:`forward`; ``context``: x is this context-parallel rank's rows, see
        :meth:`context_rows`, and the mask covers the whole image's keys)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        B, _, H, W = x.shape
        grid = self.patch_grid(H, W)
        t = torch.as_tensor(t, device=x.device).float().reshape(-1)
        if t.numel() == 1:
            t = t.expand(B)
        if t.numel() != B:
            raise ValueError(f"t must have one value per sample ({B}), got shape {tuple(t.shape)}")

        tokens = self.s_embedder(self.patchify(x))
        t_emb = self.t_embedder(t * self.timestep_scale).view(B, 1, self.hidden_size)
        cond = F.silu(t_emb)
        head_dim = self.hidden_size // self.num_groups
        rope_img = self.image_rope(*grid, head_dim, x.device, rope_window)

        text, rope_txt, attn_mask = None, None, None
        if y is not None:
            if y.dim() != 3 or y.shape[0] != B or y.shape[2] != self.txt_embed_dim:
                raise ValueError(f"y must be (B={B}, L, {self.txt_embed_dim}), got {tuple(y.shape)}")
            n_txt = min(y.shape[1], self.txt_max_length)
            text = self.y_embedder(y[:, :n_txt])
            text = text + self.y_pos_embedding[:, :n_txt].to(text.dtype)
            if self.use_text_rope:
                rope_txt = rope_1d(head_dim, n_txt, theta=self.text_rope_theta, device=x.device)
            if y_mask is not None:
                keep_txt = y_mask[:, :n_txt].to(device=x.device, dtype=torch.bool)
                keep_img = keep_txt.new_ones(B, grid[0] * grid[1])
                if context is not None:  # keys: the text and every rank's image tokens
                    keep_img = keep_txt.new_ones(B, grid[0] * grid[1] * context.size)
                attn_mask = torch.cat([keep_txt, keep_img], dim=1)[:, None, None, :]
        return PatchContext(tokens, text, t_emb, cond, rope_img, rope_txt, attn_mask, grid, context)

    def run_patch_blocks(
        self,
        ctx: PatchContext,
        inject: InjectFn | None = None,
        feature_blocks: Iterable[int] = (),
        stop_after: int | None = None,
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """MM-DiT stack; ``inject(i, h)`` runs before block i.

        Returns (tokens, {i: (B, D, Hp, Wp) tokens after block i for i in feature_blocks}).
        """
        wanted = set(feature_blocks)
        features: dict[int, torch.Tensor] = {}
        h, text = ctx.tokens, ctx.text
        last = self.patch_depth - 1 if stop_after is None else stop_after
        for i in range(last + 1):
            if inject is not None:
                h = inject(i, h)
            h, text = self.patch_blocks[i](
                h, text, ctx.cond, ctx.rope_img, ctx.rope_txt, ctx.attn_mask, text_out=i < last,
                context=ctx.context,
            )
            if i in wanted:
                features[i] = self.tokens_to_map(h, ctx.grid)
                if ctx.context is not None:  # every rank's rows: the whole map
                    features[i] = ctx.context.gather(features[i], dim=2)
        return h, features

    def pixel_condition(self, ctx: PatchContext, tokens: torch.Tensor) -> torch.Tensor:
        """Per-patch conditioning of the pixel level: s = silu(t_emb + h), (B, L, D)."""
        return F.silu(ctx.t_emb + tokens)

    def run_pixel_blocks(self, x: torch.Tensor, s: torch.Tensor, grid: tuple[int, int],
                         rope_window: tuple[int, int, int, int] | None = None,
                         context=None) -> torch.Tensor:
        """PiT stack on per-pixel tokens of x, conditioned on s (B, L, D); returns (B, C, H, W).

        ``context``: x, s and the result are this context-parallel rank's rows (``rope_window`` from
        :meth:`context_rows`); the pixel positions start at the rank's first image row."""
        B = x.shape[0]
        row_offset = int(rope_window[2]) * self.patch_size if context is not None else 0
        u = self.pixel_embedder(x, self.patch_size, row_offset=row_offset)
        s_cond = s.reshape(-1, self.hidden_size)
        head_dim = self.pixel_attn_hidden_size // self.pixel_num_groups
        rope = self.image_rope(*grid, head_dim, x.device, rope_window)
        for block in self.pixel_blocks:
            u = block(u, s_cond, B, rope, context=context)
        return self.unpatchify_pixels(self.final_layer(u), B, grid)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor | None = None,
        y_mask: torch.Tensor | None = None,
        rope_window: tuple[int, int, int, int] | None = None,
        context=None,
    ) -> torch.Tensor:
        """Velocity v = eps - x0 at (x_t, t).

        Args:
            x: (B, C, H, W) noisy image, H and W multiples of patch_size.
            t: (B,) flow time in [0, 1], t = 1 is pure noise.
            y: (B, L, txt_embed_dim) text-encoder hidden states, or None (no text stream).
            y_mask: (B, L) 1/True for real text tokens; padded tokens are not attended.
                The official pipeline passes no mask (all padded tokens are attended).
            rope_window: (Gh, Gw, top, left) in patch cells when x is a window of a larger image (a tile of
                a tiled decode, :mod:`pid.tiling`): RoPE takes the positions of the window in the (Gh, Gw)
                global patch grid, so a tile sees the positions it has in the whole image. None: x is the
                whole image.
            context: a :class:`pid.parallel.context.ContextParallel` to split this forward over its group
                (every rank passes the same whole inputs; each runs its rows of patch and pixel tokens,
                attention gathers keys/values, and every rank returns the whole output). None: one process.
        """
        x_in, rope_window = self.context_rows(x, context, rope_window)
        ctx = self.embed(x_in, t, y, y_mask, rope_window, context)
        h, _ = self.run_patch_blocks(ctx)
        s = self.pixel_condition(ctx, h)
        out = self.run_pixel_blocks(x_in, s, ctx.grid, rope_window, context)
        if context is not None:
            out = context.gather(out, dim=2)
        return self.as_velocity(out, x, t)

    def as_velocity(self, out: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network output as the velocity v = ε − x₀ that losses and samplers use.

        "v": the output is v. "x0" (JiT, Li & He 2025, "Back to Basics: Let Denoising Generative
        Models Denoise"): the output is x̂₀, and since x_t = (1 − t)x₀ + tε,
        v = (x_t − x̂₀) / max(t, t_min); a clean image is easier for a narrow net to produce than
        noise-laden v when a patch (p²·3 values) is wider than the token. "edm": x̂₀ = c_skip·x_t + c_out·out
        (Karras et al. 2022): x̂₀ prediction at t = 1, a t-scaled correction of x_t towards t = 0.
        """
        if self.prediction == "v":
            return out
        if self.prediction == "edm":
            return flow.v_from_edm_output(x, out, t, self.sigma_data).to(out.dtype)
        return flow.v_from_x0(x, out, t.clamp_min(self.x0_t_min)).to(out.dtype)
