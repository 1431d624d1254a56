"""PiD's sigma-aware latent adapter (docs/method.md §2).

A small conv network turns the (normalised, possibly noisy) generator latent
z~ into one feature map per injection point on the backbone's patch grid; each
is added to the patch tokens through a sigma-aware gate:

    h <- h + g * l,   g = sigmoid(Linear([h, l]) - exp(log_alpha) * sigma)

* grid alignment: one latent pixel covers r = sr_scale * latent_down / patch_size
  patch cells; r > 1 -> nearest upsample by r, r < 1 -> fold (1/r)^2 latent
  pixels into channels (space-to-channel);
* trunk: Conv3x3 -> SiLU -> Conv3x3 -> 4 pre-activation ResBlocks (width 512 in
  v1, 1024 in v1.5);
* one Linear head per injection point, zero-initialised: at init l = 0 and the
  network is exactly the pretrained pixel prior;
* gates start open for clean latents and closed for noisy ones
  (Linear bias 2, alpha = 5: g ~ 0.88 / 0.5 / 0.05 at sigma = 0 / 0.4 / 1) and
  are NOT zero-initialised (zero gates x zero heads would give zero gradients);
* sigma (latent noise level) enters only through the gates.

v1.5 options: a gated feature added to the PiT conditioning (``pit_injection``)
and an auxiliary head predicting the low-res RGB image (``aux_rgb_head``).

Parameter names mirror NVIDIA's ``LQProjection2D`` (latent_proj, output_heads,
gate_modules.*.content_proj / log_alpha, pit_head, aux_rgb_head <- lq_aux_rgb_head).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch
import torch.nn as nn
import torch.nn.functional as F

GATE_MODES = ("per_token", "per_token_per_channel")
PADDING_MODES = ("zeros", "replicate", "reflect")
DROP_MODES = ("zero_latent", "zero_features")


# ---------------------------------------------------------------------------
# Sigma-aware gate
# ---------------------------------------------------------------------------


class SigmaAwareGate(nn.Module):
    """g = sigmoid(content_proj([h, l]) - exp(log_alpha) * sigma);  forward: h + g * l.

    mode "per_token_per_channel" (v1): g is (B, N, D); "per_token" (v1.5): g is (B, N, 1).
    Init: content_proj weight ~ truncN(0, 0.01), bias 2.0; log_alpha = log 5.
    """

    def __init__(
        self,
        dim: int,
        mode: str = "per_token_per_channel",
        alpha_init: float = 5.0,
        bias_init: float = 2.0,
        weight_std: float = 0.01,
    ):
        super().__init__()
        if mode not in GATE_MODES:
            raise ValueError(f"gate mode must be one of {GATE_MODES}, got {mode!r}")
        self.mode = mode
        self.content_proj = nn.Linear(2 * dim, dim if mode == "per_token_per_channel" else 1)
        # Shape (1,), not a scalar: FSDP cannot shard 0-d parameters. Scalar ones (the official
        # checkpoints, older exports) load through _load_from_state_dict.
        self.log_alpha = nn.Parameter(torch.full((1,), math.log(alpha_init)))
        nn.init.trunc_normal_(self.content_proj.weight, std=weight_std)
        nn.init.constant_(self.content_proj.bias, bias_init)
        self.last_mean: torch.Tensor | None = None  # mean gate of the last call, for logging

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "log_alpha"
        if key in state_dict and state_dict[key].ndim == 0:
            state_dict[key] = state_dict[key].reshape(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.exp()

    def gate(self, h: torch.Tensor, feat: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Gate values in float32, (B, N, D) or (B, N, 1); sigma is (B,)."""
        logit = self.content_proj(torch.cat([h, feat], dim=-1)).float()
        g = torch.sigmoid(logit - self.alpha.float() * sigma.float().view(-1, 1, 1))
        self.last_mean = g.detach().mean()
        return g

    def forward(self, h: torch.Tensor, feat: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return h + self.gate(h, feat, sigma).to(h.dtype) * feat


# ---------------------------------------------------------------------------
# Conv trunk
# ---------------------------------------------------------------------------


class ResBlock(nn.Module):
    """Pre-activation residual block: x + Conv(SiLU(GN(Conv(SiLU(GN(x))))))."""

    def __init__(self, channels: int, num_groups: int = 4, padding_mode: str = "zeros"):
        super().__init__()
        self.block = nn.Sequential(
            nn.GroupNorm(num_groups, channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1, padding_mode=padding_mode),
            nn.GroupNorm(num_groups, channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1, padding_mode=padding_mode),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def latent_grid_ratio(sr_scale: int, latent_down: int, patch_size: int) -> Fraction:
    """Patch cells per latent pixel (per side), r = sr_scale * latent_down / patch_size.

    Must be 2^k for an integer k (r > 1: upsample by r; r < 1: fold by 1/r).
    """
    if min(sr_scale, latent_down, patch_size) <= 0:
        raise ValueError(
            f"sr_scale={sr_scale}, latent_down={latent_down}, patch_size={patch_size} must all be positive"
        )
    ratio = Fraction(sr_scale * latent_down, patch_size)
    n, d = ratio.numerator, ratio.denominator
    if not ((d == 1 and n & (n - 1) == 0) or (n == 1 and d & (d - 1) == 0)):
        raise ValueError(
            "latent grid ratio sr_scale * latent_down / patch_size = "
            f"{sr_scale} * {latent_down} / {patch_size} = {float(ratio):g} is not a power of two or the "
            "inverse of one; the latent cannot be aligned to the patch grid. Change sr_scale, the latent's "
            "downsampling factor, or the backbone patch_size."
        )
    return ratio


@dataclass
class AdapterOutput:
    features: list[torch.Tensor]  # one (B, N, hidden_size) per injection point
    pit: torch.Tensor | None  # (B, N, hidden_size) for the PiT conditioning, or None
    aux_rgb: torch.Tensor | None  # (B, 3, H / sr_scale, W / sr_scale), or None


class LatentAdapter(nn.Module):
    """Sigma-aware latent adapter: z~ -> gated features injected into the patch blocks.

    Args:
        latent_channels: channels of the latent as given to forward.
        hidden_size: backbone patch-token width (head output width).
        patch_depth: number of backbone patch blocks.
        patch_size: backbone patch size in pixels.
        latent_down: pixels of the low-res image per latent pixel (8 for VAEs, 16 for DINOv2/SigLIP RAE).
        sr_scale: output pixels per low-res pixel (4 or 8).
        width: conv trunk width (512 v1, 1024 v1.5).
        num_res_blocks: ResBlocks after the stem (4).
        norm_groups: GroupNorm groups (4, as in PiD).
        interval: inject before every interval-th patch block (0, interval, 2*interval, ...).
        gate: "per_token_per_channel" (v1) or "per_token" (v1.5).
        padding_mode: conv padding, "zeros" (v1) or "replicate" (v1.5).
        pit_injection: extra gated feature added to the PiT conditioning (v1.5).
        aux_rgb_head: head predicting the low-res RGB from the trunk features (v1.5).
        latent_unpatchify: unpack 2x2-packed latents first (FLUX.2: 128 ch / 16x -> 32 ch / 8x, use 2).
        drop_mode: how ``keep`` = 0 drops a latent: "zero_latent" (official: zero latent input) or
            "zero_features" (zero adapter outputs).
    """

    def __init__(
        self,
        latent_channels: int,
        hidden_size: int,
        patch_depth: int,
        patch_size: int,
        latent_down: int,
        sr_scale: int,
        width: int = 512,
        num_res_blocks: int = 4,
        norm_groups: int = 4,
        interval: int = 2,
        gate: str = "per_token_per_channel",
        padding_mode: str = "zeros",
        pit_injection: bool = False,
        aux_rgb_head: bool = False,
        latent_unpatchify: int = 1,
        drop_mode: str = "zero_latent",
    ):
        super().__init__()
        if drop_mode not in DROP_MODES:
            raise ValueError(f"drop_mode must be one of {DROP_MODES}, got {drop_mode!r}")
        self.drop_mode = drop_mode
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        if gate not in GATE_MODES:
            raise ValueError(f"gate must be one of {GATE_MODES}, got {gate!r}")
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        if width % norm_groups:
            raise ValueError(f"adapter width={width} is not divisible by norm_groups={norm_groups}")
        u = latent_unpatchify
        if u < 1 or latent_down % u or latent_channels % (u * u):
            raise ValueError(
                f"latent_unpatchify={u} must divide latent_down={latent_down} and its square must divide "
                f"latent_channels={latent_channels}"
            )
        self.latent_channels = latent_channels
        self.hidden_size = hidden_size
        self.patch_depth = patch_depth
        self.patch_size = patch_size
        self.latent_down = latent_down
        self.sr_scale = sr_scale
        self.interval = interval
        self.latent_unpatchify = u
        self.ratio = latent_grid_ratio(sr_scale, latent_down // u, patch_size)
        fold = self.ratio.denominator  # 1 unless the latent is finer than the patch grid
        in_ch = (latent_channels // (u * u)) * fold * fold

        # injection before blocks 0, interval, 2*interval, ...: 7 points for 14 blocks at interval 2
        self.injection_blocks: tuple[int, ...] = tuple(range(0, patch_depth, interval))

        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, width, 3, padding=1, padding_mode=padding_mode),
            nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1, padding_mode=padding_mode),
        ]
        layers += [ResBlock(width, norm_groups, padding_mode) for _ in range(num_res_blocks)]
        self.latent_proj = nn.Sequential(*layers)
        self.output_heads = nn.ModuleList([nn.Linear(width, hidden_size) for _ in self.injection_blocks])
        self.gate_modules = nn.ModuleList([SigmaAwareGate(hidden_size, gate) for _ in self.injection_blocks])

        self.pit_head = nn.Linear(width, hidden_size) if pit_injection else None
        self.pit_gate = SigmaAwareGate(hidden_size, gate) if pit_injection else None

        self.aux_rgb_head = None
        if aux_rgb_head:
            if patch_size % sr_scale:
                raise ValueError(
                    f"aux_rgb_head needs patch_size={patch_size} to be a multiple of sr_scale={sr_scale} "
                    "(each patch covers patch_size / sr_scale low-res pixels)"
                )
            self.aux_factor = patch_size // sr_scale
            self.aux_rgb_head = nn.Sequential(
                nn.LayerNorm(width),
                nn.Linear(width, width),
                nn.SiLU(),
                nn.Linear(width, 3 * self.aux_factor**2),
            )
        self.init_weights()

    def init_weights(self) -> None:
        """Convs truncN(0, 0.02) (small activations under bf16); heads zero; aux head truncN(0, 0.02)."""
        for m in self.latent_proj.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        for head in [*self.output_heads, self.pit_head]:
            if head is not None:
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)
        if self.aux_rgb_head is not None:
            for m in self.aux_rgb_head.modules():
                if isinstance(m, nn.Linear):
                    nn.init.trunc_normal_(m.weight, std=0.02)
                    nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ alignment

    def unpack(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C*u*u, h, w) -> (B, C, h*u, w*u); channel index c*u*u + i*u + j holds pixel (i, j)."""
        u = self.latent_unpatchify
        if u == 1:
            return z
        B, C, h, w = z.shape
        z = z.reshape(B, C // (u * u), u, u, h, w).permute(0, 1, 4, 2, 5, 3)
        return z.reshape(B, C // (u * u), h * u, w * u)

    def align(self, z: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Latent (B, C, h, w) -> (B, C', Hp, Wp) on the patch grid, as the official ``LQProjection2D``.

        With r latent-pixel-to-patch cells (:func:`latent_grid_ratio`):
        r > 1 (coarser latent): nearest resize to the grid, whatever the latent's exact size (a latent of
        another ratio, e.g. 4 for v1 FLUX.2 / DINOv2, 8 for SigLIP, is resized the same way);
        r = 1: used as is, bilinear-resized when the sizes differ;
        r < 1 (finer latent): bilinear-resized to (Hp/r, Wp/r) when needed, then 1/r x 1/r pixels fold
        into channels. A latent larger than the patch grid where the config says coarser is an error (it
        is almost always the latent of the high-resolution image).
        """
        if z.dim() != 4 or z.shape[1] != self.latent_channels:
            raise ValueError(f"latent must be (B, {self.latent_channels}, h, w), got {tuple(z.shape)}")
        z = self.unpack(z)
        B, C, h, w = z.shape
        Hp, Wp = grid
        r = self.ratio
        if r > 1:
            if h > Hp or w > Wp:
                raise ValueError(self._size_error(z, grid))
            return F.interpolate(z, size=(Hp, Wp), mode="nearest")
        if r == 1:
            return z if (h, w) == (Hp, Wp) else F.interpolate(z, size=(Hp, Wp), mode="bilinear",
                                                              align_corners=False)
        f = r.denominator  # latent finer than the grid: fold f x f pixels into channels
        if (h, w) != (Hp * f, Wp * f):
            z = F.interpolate(z, size=(Hp * f, Wp * f), mode="bilinear", align_corners=False)
        z = z.reshape(B, C, Hp, f, Wp, f).permute(0, 1, 3, 5, 2, 4)
        return z.reshape(B, C * f * f, Hp, Wp)

    def _size_error(self, z: torch.Tensor, grid: tuple[int, int]) -> str:
        Hp, Wp = grid
        r = self.ratio
        return (
            f"latent spatial size {tuple(z.shape[-2:])} does not match the patch grid {Hp}x{Wp}: with "
            f"sr_scale={self.sr_scale}, latent_down={self.latent_down}, patch_size={self.patch_size} one "
            f"latent pixel covers {float(r):g} patch cells, so the latent should be "
            f"{float(Hp / r):g}x{float(Wp / r):g}. "
            "Check that the latent encodes the image downscaled by sr_scale."
        )

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        latent: torch.Tensor,
        grid: tuple[int, int],
        keep: torch.Tensor | None = None,
        return_aux: bool = False,
    ) -> AdapterOutput:
        """Per-injection-point features for a latent.

        ``keep`` (B,) drops the latent of samples with keep 0, by ``drop_mode``: "zero_latent" (the
        official LQTensorDrop: the latent *input* becomes zeros and the adapter and gates still run on it)
        or "zero_features" (the adapter's outputs are zeroed, so the backbone sees no injection at all).
        """
        feat = self.trunk(latent, grid, keep)  # (B, width, Hp, Wp)
        out = self.heads(feat, keep)
        if return_aux and self.aux_rgb_head is not None:
            out.aux_rgb = self.predict_rgb(feat.flatten(2).transpose(1, 2), grid)
        return out

    def trunk(self, latent: torch.Tensor, grid: tuple[int, int],
              keep: torch.Tensor | None = None) -> torch.Tensor:
        """The conv trunk's map (B, width, Hp, Wp) on the patch grid (the first half of :meth:`forward`).

        Its GroupNorms take statistics over the whole grid; everything after it (:meth:`heads`) is per token,
        so a tile of the image takes its features from the window of this map (:mod:`pid.tiling`).
        """
        if keep is not None and self.drop_mode == "zero_latent":
            latent = latent * keep.to(device=latent.device, dtype=latent.dtype).view(-1, 1, 1, 1)
        return self.latent_proj(self.align(latent, grid))

    def heads(self, feat: torch.Tensor, keep: torch.Tensor | None = None) -> AdapterOutput:
        """Per-injection-point features (B, h·w, hidden_size) of a trunk map or a window of it
        (B, width, h, w): the second half of :meth:`forward` (``keep`` applied by ``drop_mode``)."""
        tokens = feat.flatten(2).transpose(1, 2)  # (B, N, width)
        features = [head(tokens) for head in self.output_heads]
        pit = self.pit_head(tokens) if self.pit_head is not None else None
        if keep is not None and self.drop_mode == "zero_features":
            k = keep.to(device=tokens.device, dtype=tokens.dtype).view(-1, 1, 1)
            features = [f * k for f in features]
            pit = pit * k if pit is not None else None
        return AdapterOutput(features, pit, None)

    def predict_rgb(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Auxiliary low-res RGB (B, 3, Hp*f, Wp*f), f = patch_size / sr_scale (not masked by ``keep``)."""
        (Hp, Wp), f = grid, self.aux_factor
        rgb = self.aux_rgb_head(tokens).view(tokens.shape[0], Hp, Wp, 3, f, f)
        return rgb.permute(0, 3, 1, 4, 2, 5).reshape(tokens.shape[0], 3, Hp * f, Wp * f)

    def injection_index(self, block_idx: int) -> int | None:
        """Index of the head/gate feeding patch block ``block_idx``, or None if nothing is injected there."""
        return block_idx // self.interval if block_idx % self.interval == 0 else None

    def inject(
        self, block_idx: int, h: torch.Tensor, out: AdapterOutput, sigma: torch.Tensor
    ) -> torch.Tensor:
        """h <- h + g * l before patch block ``block_idx`` (identity between injection points)."""
        k = self.injection_index(block_idx)
        if k is None or k >= len(out.features):
            return h
        return self.gate_modules[k](h, out.features[k], sigma)

    def inject_pit(self, s: torch.Tensor, out: AdapterOutput, sigma: torch.Tensor) -> torch.Tensor:
        """Gated PiT injection into the pixel-level conditioning s (B, N, D)."""
        if self.pit_gate is None or out.pit is None:
            return s
        return self.pit_gate(s, out.pit, sigma)
