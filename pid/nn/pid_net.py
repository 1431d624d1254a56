"""PiDNet: PixelDiT backbone + sigma-aware latent adapter (the PiD decoder network).

    v = PiDNet(x_t, t, latent=z~, sigma=sigma, y=text)

The adapter's features enter before every ``interval``-th patch block through
sigma-aware gates (h <- h + g * l) and, optionally, the PiT conditioning. With
``latent=None`` (or no adapter) the network is exactly the pixel prior.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn as nn

from pid.nn.adapter import AdapterOutput, LatentAdapter
from pid.nn.pixel_dit import PixelDiT

Extras = dict[str, object]

class PiDNet(PixelDiT):
    """Pixel-diffusion decoder: PixelDiT conditioned on a generator latent.

    Extra args (all other args as PixelDiT):
        adapter: callable building the adapter (e.g. Hydra ``_partial_: true`` of LatentAdapter),
            called with latent_channels, hidden_size, patch_depth, patch_size, latent_down, sr_scale;
            or None for a pure pixel prior.
        latent_channels: channels of the latent given to forward.
        latent_down: low-res image pixels per latent pixel (8 for VAEs, 16 for RAE encoders).
        sr_scale: output pixels per low-res image pixel (4 or 8).
        freeze_backbone: train the adapter only (PiD v1.5).
    """

    def __init__(
        self,
        adapter: Callable[..., LatentAdapter] | None = None,
        latent_channels: int = 16,
        latent_down: int = 8,
        sr_scale: int = 4,
        freeze_backbone: bool = False,
        **backbone_kwargs,
    ):
        super().__init__(**backbone_kwargs)
        self.latent_channels = latent_channels
        self.latent_down = latent_down
        self.sr_scale = sr_scale
        self.freeze_backbone = freeze_backbone
        self.adapter: LatentAdapter | None = None
        if adapter is not None:
            self.adapter = adapter(
                latent_channels=latent_channels,
                hidden_size=self.hidden_size,
                patch_depth=self.patch_depth,
                patch_size=self.patch_size,
                latent_down=latent_down,
                sr_scale=sr_scale,
            )
        if freeze_backbone:
            if self.adapter is None:
                raise ValueError("freeze_backbone=True needs an adapter (nothing would be trainable)")
            for p in self.backbone_parameters():
                p.requires_grad_(False)

    # ------------------------------------------------------------------ parameter groups

    def adapter_parameters(self) -> Iterator[nn.Parameter]:
        return iter(()) if self.adapter is None else self.adapter.parameters()

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        return (p for name, p in self.named_parameters() if not name.startswith("adapter."))

    @torch.no_grad()
    def gate_stats(self) -> dict[str, float]:
        """Per injection point: mean gate of the last forward (if any) and alpha = exp(log_alpha)."""
        stats: dict[str, float] = {}
        if self.adapter is None:
            return stats
        gates = [
            (f"block{b}", g)
            for b, g in zip(self.adapter.injection_blocks, self.adapter.gate_modules, strict=True)
        ]
        if self.adapter.pit_gate is not None:
            gates.append(("pit", self.adapter.pit_gate))
        for name, gate in gates:
            if gate.log_alpha.numel() == 1:  # under FSDP a rank's shard may hold none of it
                stats[f"gate/{name}/alpha"] = float(gate.alpha)
            if gate.last_mean is not None:
                stats[f"gate/{name}/mean"] = float(gate.last_mean)
        return stats

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        latent: torch.Tensor | None = None,
        sigma: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        y_mask: torch.Tensor | None = None,
        latent_keep: torch.Tensor | None = None,
        return_extras: bool = False,
        feature_blocks: Iterable[int] = (),
        features_only: bool = False,
        latent_features: AdapterOutput | None = None,
        encode_only: bool = False,
        rope_window: tuple[int, int, int, int] | None = None,
        context=None,
    ) -> torch.Tensor | tuple[torch.Tensor | None, Extras] | AdapterOutput:
        """Velocity v = eps - x0.

        Args:
            x, t, y, y_mask: as PixelDiT.forward.
            latent: (B, latent_channels, h, w) normalised (noisy) latent z~, or None (pure prior).
            sigma: (B,) latent noise level in [0, 1]; default 0. Only the gates see it.
            latent_keep: (B,) bool/float, 0 removes the adapter contribution for that sample
                (latent dropout / latent-unconditional branch of dual CFG).
            return_extras: return (v, extras) with extras = {"features": {i: (B, D, Hp, Wp) patch
                tokens after block i for i in feature_blocks}, "aux_rgb": (B, 3, H/sr, W/sr) or None}.
            feature_blocks: 0-based patch-block indices whose outputs go to extras["features"].
            features_only: stop after the last of feature_blocks and return (None, extras)
                (discriminator features without the pixel level).
            latent_features: the adapter's output for this batch from :meth:`encode_latent` (at this
                image size, with the keep mask already applied), used instead of ``latent`` /
                ``latent_keep`` so a sampler computes it once per decode; the gates still see this
                call's tokens and ``sigma``.
            encode_only: return :meth:`encode_latent` of ``latent`` at ``x``'s size (with ``latent_keep``)
                and nothing else. Through ``forward`` a wrapper that gathers parameters (FSDP) sees the call.
            rope_window: (Gh, Gw, top, left): x is a tile of a (Gh, Gw)-patch image (PixelDiT.forward);
                ``latent_features`` then hold the tile's features.
            context: a :class:`pid.parallel.context.ContextParallel`: the forward is split over its group
                by patch rows (PixelDiT.forward). Every rank passes the same whole inputs (and whole
                ``latent_features``); the adapter runs whole and each rank injects its tokens' features.
                The velocity and extras["features"] come back whole on every rank; extras["aux_rgb"] is
                the adapter's, whole. Image heights must split into equal rows of patches.
        """
        if encode_only:
            if latent is None:
                raise ValueError("encode_only=True needs a latent")
            return self.encode_latent(latent, tuple(x.shape[-2:]), keep=latent_keep)
        if latent_features is not None and latent is not None:
            raise ValueError("pass either latent (features computed here) or latent_features, not both")
        if (latent is not None or latent_features is not None) and self.adapter is None:
            raise ValueError(
                "a latent was passed but this PiDNet has no adapter (adapter=None: pure pixel prior)"
            )
        feature_blocks = tuple(sorted(set(feature_blocks)))
        for i in feature_blocks:
            if not 0 <= i < self.patch_depth:
                raise ValueError(f"feature block {i} is outside 0..{self.patch_depth - 1}")
        if features_only and not feature_blocks:
            raise ValueError("features_only=True needs at least one index in feature_blocks")

        x_in, rope_window = self.context_rows(x, context, rope_window)
        ctx = self.embed(x_in, t, y, y_mask, rope_window, context)
        B = x.shape[0]
        out: AdapterOutput | None = None
        inject = None
        if latent is not None:
            out = self.encode_latent(latent, x.shape[-2:], keep=latent_keep, return_aux=return_extras)
        elif latent_features is not None:
            out = latent_features
            n = out.features[0].shape[0] if out.features else B
            if n != B:
                raise ValueError(f"latent_features are for a batch of {n}, x is a batch of {B}")
        if out is not None and context is not None:  # this rank's tokens of the whole-image features
            full = self.patch_grid(*x.shape[-2:])
            out = AdapterOutput([context.shard_tokens(f, full) for f in out.features],
                                None if out.pit is None else context.shard_tokens(out.pit, full), out.aux_rgb)
        if out is not None:
            sigma = self._per_sample(sigma, B, x.device, default=0.0)

            def inject(i: int, h: torch.Tensor) -> torch.Tensor:
                return self.adapter.inject(i, h, out, sigma)

        stop = feature_blocks[-1] if features_only else None
        h, features = self.run_patch_blocks(ctx, inject, feature_blocks, stop_after=stop)
        extras: Extras = {"features": features, "aux_rgb": None if out is None else out.aux_rgb}
        if features_only:
            return None, extras

        s = self.pixel_condition(ctx, h)
        if out is not None:
            s = self.adapter.inject_pit(s, out, sigma)
        pixels = self.run_pixel_blocks(x_in, s, ctx.grid, rope_window, context)
        if context is not None:
            pixels = context.gather(pixels, dim=2)
        v = self.as_velocity(pixels, x, t)
        return (v, extras) if return_extras else v

    def encode_latent(
        self,
        latent: torch.Tensor,
        size: tuple[int, int],
        keep: torch.Tensor | None = None,
        return_aux: bool = False,
    ) -> AdapterOutput:
        """The adapter's features for a latent, independent of x_t, t and sigma.

        Args:
            latent: (B, latent_channels, h, w) normalised (noisy) latent z~.
            size: (H, W) of the output image in pixels (the patch grid is (H, W) / patch_size).
            keep: (B,) bool/float or scalar, 0 drops the latent of that sample (the adapter's drop_mode).
            return_aux: also compute the auxiliary low-res RGB (adapters with aux_rgb_head).

        Returns the AdapterOutput (features (B, N, hidden_size) per injection point) that
        ``forward(..., latent_features=...)`` takes at every sampler step of one decode.
        """
        if self.adapter is None:
            raise ValueError("this PiDNet has no adapter (adapter=None: pure pixel prior)")
        grid = self.patch_grid(int(size[0]), int(size[1]))
        B = latent.shape[0]
        keep = None if keep is None else self._per_sample(keep, B, latent.device, default=1.0)
        return self.adapter(latent, grid, keep=keep, return_aux=return_aux)

    @staticmethod
    def _per_sample(value, batch: int, device, default: float) -> torch.Tensor:
        """None / scalar / (B,) -> float32 (B,) tensor."""
        if value is None:
            return torch.full((batch,), default, device=device)
        value = torch.as_tensor(value, device=device).float().reshape(-1)
        if value.numel() == 1:
            value = value.expand(batch)
        if value.numel() != batch:
            raise ValueError(f"expected one value per sample ({batch}), got shape {tuple(value.shape)}")
        return value
