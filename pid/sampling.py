"""Decode a latent with a PiD network: noise at the target size → sampler → image.

Used by the training module (image grids, held-out comparison), the public API and evaluation.
"""

from __future__ import annotations

import torch
from torch import nn

from pid.diffusion import flow, schedules
from pid.diffusion.guidance import DualCFG
from pid.diffusion.samplers import get_sampler


def output_size(latent: torch.Tensor, latent_down: int, sr_scale: int) -> tuple[int, int]:
    """Pixel size PiD generates for a latent: latent grid × latent down factor × sr_scale."""
    h, w = latent.shape[-2:]
    return h * latent_down * sr_scale, w * latent_down * sr_scale


def null_text(y: torch.Tensor | None, text_on: torch.Tensor,
              y_null: torch.Tensor | None) -> torch.Tensor | None:
    """Caption states with the text of samples where ``text_on`` is False replaced by the null text.

    ``y`` (N, L, D); ``y_null`` (1 or N, L, D): the encoded null caption (the official teacher CFG uses
    the encoded negative prompt, training the encoded empty caption); None: zero states.
    """
    if y is None:
        return None
    keep = text_on.view(-1, 1, 1)
    if y_null is None:
        return y * keep.to(y.dtype)
    return torch.where(keep, y, y_null.to(device=y.device, dtype=y.dtype).expand_as(y))


class PiDDenoiser:
    """A PiDNet behind DualCFG's switchable signature ``(x_t, t, text_on, latent_on, **cond)``.

    ``text_on`` / ``latent_on`` are (N,) bool; ``text_on`` False replaces the caption states ``y``
    (N, L, txt_dim) by ``y_null`` (zeros without one, see :func:`null_text`), ``latent_on`` False drops
    the latent (N, C, h, w) by the adapter's drop_mode.
    With ``cache_latent_features`` (default), :meth:`prepare` (called by DualCFG once per batch
    layout) runs the adapter once via ``net.encode_latent`` and every step passes the result as
    ``latent_features``; the gates still see each step's tokens and ``sigma``.
    """

    def __init__(self, net: nn.Module, cache_latent_features: bool = True):
        self.net = net
        self.cache_latent_features = cache_latent_features

    def prepare(self, x_t, t, text_on, latent_on, latent=None, sigma=None, y=None, y_mask=None, y_null=None,
                **cond):
        """Conditioning for every step of one decode: ``latent`` replaced by its adapter features."""
        if (latent is not None and self.cache_latent_features
                and getattr(self.net, "adapter", None) is not None):
            # through forward, so that a sharding wrapper (FSDP) gathers the adapter's weights for the call
            features = self.net(x_t, t, latent=latent, latent_keep=latent_on, encode_only=True)
            return {"latent_features": features, "sigma": sigma, "y": y, "y_mask": y_mask, "y_null": y_null,
                    **cond}
        return {"latent": latent, "sigma": sigma, "y": y, "y_mask": y_mask, "y_null": y_null, **cond}

    def __call__(self, x_t, t, text_on, latent_on, latent=None, sigma=None, y=None, y_mask=None,
                 latent_features=None, y_null=None, **cond):
        y = null_text(y, text_on, y_null)
        if latent_features is not None:
            return self.net(x_t, t, sigma=sigma, y=y, y_mask=y_mask, latent_features=latent_features, **cond)
        keep = latent_on if latent is not None else None
        return self.net(x_t, t, latent=latent, sigma=sigma, y=y, y_mask=y_mask, latent_keep=keep, **cond)


def pid_denoiser(net: nn.Module, cache_latent_features: bool = True) -> PiDDenoiser:
    """Adapt a PiDNet to DualCFG's switchable signature ``(x_t, t, text_on, latent_on, **cond)``."""
    return PiDDenoiser(net, cache_latent_features)


@torch.no_grad()
def decode_latent(
    net: nn.Module,
    latent: torch.Tensor,
    sigma: float | torch.Tensor = 0.0,
    *,
    sr_scale: int,
    latent_down: int,
    num_steps: int,
    sampler: str,
    text_cfg: float = 1.0,
    latent_cfg: float = 1.0,
    text: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
    null_text: torch.Tensor | None = None,
    shift_base: float = 6.0,
    shift_ref_size: float = 2048,
    shift_rule: str = "area",
    generator: torch.Generator | None = None,
    timesteps: torch.Tensor | None = None,
    tile: int | None = None,
    tile_overlap: int | None = None,
    context=None,
) -> torch.Tensor:
    """Sample the image in [-1, 1] for a normalised latent (possibly noisy at level σ).

    Args:
        latent: (B, C, h, w) normalised latent; the image is (B, 3, h·latent_down·sr_scale, ...).
        sigma: latent noise level in [0, 1] (scalar or (B,)).
        sampler: "dpmpp_2m" (the official teacher sampler, on the official grid), "euler" / "heun" (on the
            grid from t = 1) or "sde" (the student: give ``timesteps=student_timesteps(...)``).
        text: caption states (B, L, D) and mask, or (None, None) for a text-free network.
        null_text: (1 or B, L, D) states of the null caption the text-CFG branch uses (zeros if None).
        shift_rule, shift_base, shift_ref_size: the time shift of the grid (:func:`flow.release_shift`).
        timesteps: explicit grid (wins over ``num_steps`` and the shift).
        tile, tile_overlap: decode in overlapping tiles of ``tile`` output pixels (a multiple of the
            patch size) sharing at least ``tile_overlap`` pixels (default tile / 4), their velocities
            blended at every step (:mod:`pid.tiling`): the network's memory is a tile's. A tile that
            covers the image decodes it whole, exactly as without ``tile``. Raises ValueError for a tile
            or overlap off the patch grid.
        context: a :class:`pid.parallel.context.ContextParallel`: every network call is split over its
            group by patch rows (:func:`pid.parallel.context.init_context_parallel`, e.g. under torchrun);
            every rank of the group must call with the same arguments, the random state (global and
            ``generator``) is taken from the group's first rank, and every rank returns the whole image,
            the one a single process decodes. Raises ValueError for a height whose patch rows do not split
            evenly (naming the sizes that work) or together with ``tile``.
    """
    want = getattr(getattr(net, "adapter", None), "latent_channels", None)
    if latent.ndim != 4 or (want is not None and latent.shape[1] != want):
        raise ValueError(f"latent must be (B, {want or 'C'}, h, w) for this decoder, got "
                         f"{tuple(latent.shape)}: pass the latent of the decoder's own latent space")
    b = latent.shape[0]
    device = latent.device
    height, width = output_size(latent, latent_down, sr_scale)
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=device).expand(b).contiguous()
    y, y_mask = text
    denoiser = pid_denoiser(net)
    cp_cond = {}
    if context is not None and context.size > 1:
        if tile is not None:
            raise ValueError("decode with context parallelism splits the whole image over the ranks: pass "
                             "either context or tile, not both")
        context.rows(height // int(net.patch_size), int(net.patch_size))  # refuse an uneven split up front
        context.sync_rng(device, [generator] if generator is not None else [])
        cp_cond = {"context": context}
    if tile is not None:
        from pid.tiling import TiledDenoiser, plan_tiles

        layout = plan_tiles((height, width), int(net.patch_size), tile, tile_overlap)
        if layout.tiled:
            denoiser = TiledDenoiser(net, layout)
    model = DualCFG(denoiser, text_scale=text_cfg if y is not None else 1.0, latent_scale=latent_cfg,
                    cond={"latent": latent, "sigma": sigma, "y": y, "y_mask": y_mask, "y_null": null_text,
                          **cp_cond})
    if timesteps is None:
        shift = flow.release_shift(height, width, base=shift_base, ref_size=shift_ref_size, rule=shift_rule)
        grid = schedules.official_teacher_timesteps if sampler == "dpmpp_2m" else schedules.teacher_timesteps
        timesteps = grid(num_steps, shift=shift)
    if device.type == "meta":  # a shape-only run (pid.guard's estimate): no values to draw
        noise = torch.empty((b, 3, height, width), device=device)
    else:
        noise = torch.randn((b, 3, height, width), generator=generator, device="cpu" if generator is None
                            else generator.device).to(device)
    return get_sampler(sampler)(model, noise, timesteps, generator=generator).clamp(-1.0, 1.0)
