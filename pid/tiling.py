r"""Tiled decoding on one device: overlapping tiles on the patch grid, velocities blended at every step.

A decode whose whole image does not fit a device runs the network on overlapping tiles of ``tile`` × ``tile``
output pixels and blends their velocities into one velocity of the whole image at every sampler step — the
MultiDiffusion fusion (Bar-Tal et al. 2023, "MultiDiffusion: Fusing Diffusion Paths for Controlled Image
Generation", ICML), whose least-squares step is the per-pixel weighted mean of the tiles' predictions:

.. math::  v(x_t) = \sum_i W_i \odot v_\theta(x_t[T_i]) \;/\; \sum_i W_i .

The sampler keeps the whole image's state and noise (samplers stay pure: :class:`TiledDenoiser` is a
denoiser with the signature :class:`~pid.diffusion.guidance.DualCFG` wraps), so a tiled and a whole decode
start from the same noise. What each tile sees:

* its window of x_t, on the patch grid (tile corners are multiples of the patch size);
* its **global RoPE positions**: the network is told the window's place in the whole image's patch grid
  (``rope_window``, :meth:`pid.nn.pixel_dit.PixelDiT.forward`), so positions (and NTK scaling) are those of
  the whole decode, not of a small image;
* its **latent features**: the adapter's conv trunk runs once per decode on the whole latent
  (:meth:`pid.nn.adapter.LatentAdapter.trunk`: its GroupNorm statistics are image-wide, so a window of the
  latent with a margin would not give the same features), and each tile takes its window of that map
  through the per-token heads (:meth:`~pid.nn.adapter.LatentAdapter.heads`): the features a tile sees are
  exactly the whole decode's;
* the text tokens and t, σ of the whole decode.

Weights :math:`W_i`: 1 inside a tile, a linear ramp over ``tile_overlap`` pixels on each side that borders
another tile (none on the image's border), so a pixel's velocity passes smoothly from one tile to the next.
What differs from a whole decode is attention: a tile's tokens attend only within the tile.

Memory: the network's activations are those of one tile (times the guidance branches), whatever the image
size; what grows with the image is the sampler's state and the blended velocity (a few 3 × H × W float32
maps per image) and the trunk map (adapter width × H/p × W/p). Time: every pixel in an overlap is computed
by each tile covering it, so a tiled decode costs (covered pixels / image pixels) × a whole decode's
network work, plus the attention it saves.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["TileLayout", "TiledDenoiser", "first_tiles_only", "plan_tiles", "tile_starts"]

_TILE_LIMIT: ContextVar[int | None] = ContextVar("pid_tiling_limit", default=None)


@contextmanager
def first_tiles_only(n: int):
    """Within the block, a :class:`TiledDenoiser` call runs only its first ``n`` tiles.

    For cost estimates (:func:`pid.guard.estimate_decode`): the tiles of a layout are alike, so the cost of
    1 and 2 tiles gives the cost of all of them without running them; the velocity returned is then not
    the image's (pixels no tile ran are divided by zero weight)."""
    token = _TILE_LIMIT.set(int(n))
    try:
        yield
    finally:
        _TILE_LIMIT.reset(token)


def tile_starts(length: int, tile: int, overlap: int, patch: int) -> list[int]:
    """Start offsets (pixels, multiples of ``patch``) of tiles of ``tile`` px covering ``length`` px with at
    least ``overlap`` px shared by neighbours; the first starts at 0, the last ends at ``length``, the rest
    spread evenly on the patch grid."""
    if tile >= length:
        return [0]
    n = -(-(length - overlap) // (tile - overlap))  # ceil((L - o) / (T - o))
    cells = (length - tile) // patch
    return [round(i * cells / (n - 1)) * patch for i in range(n)]


@dataclass(frozen=True)
class TileLayout:
    """Tiles of a ``size`` (H, W) px output: ``tile_hw`` px each at ``starts`` (top, left); ``overlap`` px
    of blending ramp; ``patch`` the network's patch size. ``tiled``: False when one tile covers the image."""

    size: tuple[int, int]
    tile_hw: tuple[int, int]
    overlap: int
    patch: int
    rows: tuple[int, ...]
    cols: tuple[int, ...]

    @property
    def tiled(self) -> bool:
        return len(self.rows) * len(self.cols) > 1

    @property
    def starts(self) -> list[tuple[int, int]]:
        return [(r, c) for r in self.rows for c in self.cols]

    def axis_weights(self, device=None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per tile row and tile column, the 1-D float32 blending weights (th,) and (tw,): 1 inside, a linear
        ramp over ``overlap`` px on each side that borders another tile. A tile's weight is their outer
        product (:meth:`weights`)."""
        def axis(starts, t, length):
            out = []
            for s in starts:
                w = torch.ones(t, device=device)
                if self.overlap > 0:
                    ramp = torch.arange(1, self.overlap + 1, device=device, dtype=torch.float32)
                    ramp = ramp / (self.overlap + 1)
                    if s > 0:
                        w[: self.overlap] = ramp
                    if s + t < length:
                        w[t - self.overlap:] = torch.minimum(w[t - self.overlap:], ramp.flip(0))
                out.append(w)
            return out

        return axis(self.rows, self.tile_hw[0], self.size[0]), axis(self.cols, self.tile_hw[1], self.size[1])

    def weights(self, device=None) -> torch.Tensor:
        """(n_tiles, th, tw) float32 blending weights, in the order of :attr:`starts`."""
        wr, wc = self.axis_weights(device)
        return torch.stack([a[:, None] * b[None, :] for a in wr for b in wc])


def plan_tiles(size: tuple[int, int], patch: int, tile, tile_overlap=None) -> TileLayout:
    """Check ``tile`` / ``tile_overlap`` against the output ``size`` (H, W) px and the ``patch`` size.

    Args:
        tile: tile side in output pixels, an int multiple of ``patch`` (a side of the image shorter than
            ``tile`` is one tile along that side).
        tile_overlap: pixels neighbouring tiles share at least, a multiple of ``patch`` in [0, tile); None:
            a quarter of the tile, rounded down to the patch grid.

    Raises:
        ValueError: a tile or overlap that is not a whole number, off the patch grid, too small, or an
            overlap that is not smaller than the tile — each message names the values that work.
    """
    if isinstance(tile, bool) or not isinstance(tile, int):
        raise ValueError(f"tile={tile!r}: give the tile side in output pixels as an integer multiple of the "
                         f"patch size {patch} (e.g. tile={8 * patch})")
    if tile < patch or tile % patch:
        lower = max(patch, tile // patch * patch)
        raise ValueError(f"tile={tile} is not a positive multiple of the network's patch size {patch}: "
                         f"tiles lie on the patch grid; use tile={lower} or tile={lower + patch}")
    if tile_overlap is None:
        tile_overlap = tile // 4 // patch * patch
    if isinstance(tile_overlap, bool) or not isinstance(tile_overlap, int):
        raise ValueError(f"tile_overlap={tile_overlap!r}: give the overlap in output pixels as an integer "
                         f"multiple of the patch size {patch}")
    if tile_overlap < 0 or tile_overlap % patch or tile_overlap >= tile:
        lower = max(0, min(tile_overlap, tile - patch)) // patch * patch
        raise ValueError(f"tile_overlap={tile_overlap} must be a multiple of the patch size {patch} in "
                         f"[0, tile={tile}); e.g. tile_overlap={lower}")
    h, w = (int(v) for v in size)
    th, tw = min(tile, h), min(tile, w)
    rows = tuple(tile_starts(h, th, tile_overlap, patch))
    cols = tuple(tile_starts(w, tw, tile_overlap, patch))
    return TileLayout((h, w), (th, tw), tile_overlap, patch, rows, cols)


class TiledDenoiser:
    """A PiD network as a switchable denoiser ``(x_t, t, text_on, latent_on, **cond) -> v`` that runs tile
    by tile (see the module docstring); :class:`~pid.diffusion.guidance.DualCFG` wraps it as it wraps
    :class:`pid.sampling.PiDDenoiser`.

    Args:
        net: a :class:`~pid.nn.pid_net.PiDNet` (with or without an adapter), whose forward takes
            ``rope_window``; not wrapped by FSDP (its adapter is called directly).
        layout: :func:`plan_tiles` for the decode's output size.

    ``prepare`` (called once per decode by DualCFG) runs the adapter's trunk on the whole latent; each call
    returns the blended velocity (N, 3, H, W) in float32.
    """

    def __init__(self, net: nn.Module, layout: TileLayout):
        self.net = net
        self.layout = layout
        self._weights: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None

    def prepare(self, x_t, t, text_on, latent_on, latent=None, sigma=None, y=None, y_mask=None, y_null=None,
                **cond):
        """The adapter's trunk map (N, width, Hp, Wp) of the whole latent, replacing ``latent``."""
        trunk = None
        if latent is not None:
            if getattr(self.net, "adapter", None) is None:
                raise ValueError("a latent was passed but this network has no adapter")
            grid = self.net.patch_grid(*x_t.shape[-2:])
            keep = latent_on.to(device=latent.device, dtype=torch.float32)
            trunk = self.net.adapter.trunk(latent, grid, keep)
        return {"trunk": trunk, "sigma": sigma, "y": y, "y_mask": y_mask, "y_null": y_null, **cond}

    def __call__(self, x_t, t, text_on, latent_on, trunk=None, sigma=None, y=None, y_mask=None, y_null=None,
                 latent=None, **cond):
        from pid.sampling import null_text

        if latent is not None:  # called without prepare: compute the trunk here
            trunk = self.prepare(x_t, t, text_on, latent_on, latent=latent)["trunk"]
        lay, p = self.layout, self.layout.patch
        if tuple(x_t.shape[-2:]) != lay.size:
            raise ValueError(f"x_t is {tuple(x_t.shape[-2:])} px, the tile layout was planned for {lay.size}")
        if self._weights is None or self._weights[0][0].device != x_t.device:
            self._weights = lay.axis_weights(x_t.device)  # 1-D: a tile's 2-D weight is made when it runs
        y = null_text(y, text_on, y_null)
        keep = latent_on.to(device=x_t.device, dtype=torch.float32)
        grid_h, grid_w = lay.size[0] // p, lay.size[1] // p
        th, tw = lay.tile_hw
        v = torch.zeros(x_t.shape, dtype=torch.float32, device=x_t.device)
        wsum = torch.zeros(lay.size, dtype=torch.float32, device=x_t.device)
        wr, wc = self._weights
        tiles = [(i, j) for i in range(len(lay.rows)) for j in range(len(lay.cols))]
        if _TILE_LIMIT.get() is not None:
            tiles = tiles[:_TILE_LIMIT.get()]
        for i, j in tiles:
            top, left, weight = lay.rows[i], lay.cols[j], wr[i][:, None] * wc[j][None, :]
            rows, cols = slice(top, top + th), slice(left, left + tw)
            kw = {}
            if trunk is not None:
                window = trunk[..., top // p:(top + th) // p, left // p:(left + tw) // p]
                kw["latent_features"] = self.net.adapter.heads(window, keep)
            out = self.net(x_t[..., rows, cols], t, sigma=sigma, y=y, y_mask=y_mask,
                           rope_window=(grid_h, grid_w, top // p, left // p), **kw, **cond)
            v[..., rows, cols] += out.float() * weight
            wsum[rows, cols] += weight
            del out, kw, weight  # free this tile's activations and features before the next tile's forward
        return v.div_(wsum)
