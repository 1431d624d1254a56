"""DMD2 discriminator: small conv heads on patch features of the frozen teacher (docs/method.md §4).

The teacher runs up to a middle patch block (``PiDNet(..., feature_blocks=(k,), features_only=True)``)
and returns (B, D, Hp, Wp) patch-token maps; one head per tapped block reduces its map to logits:
Conv4×4/2 → GroupNorm → LeakyReLU (repeated ``num_conv_layers − 1`` times, halving channels, ≥ 64)
→ Conv1×1 → 1 channel → global average (or PatchGAN logits with ``patch_logits``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn


def group_norm_groups(channels: int, max_groups: int = 32) -> int:
    """GroupNorm groups of the official ``Discriminator_ImageDiT`` head: max(1, C // 4) for C <= 32, else the
    largest divisor of C that is <= 32 (e.g. 48 → 24, 768 → 32)."""
    if channels <= max_groups:
        return max(1, channels // 4)
    return next(g for g in range(max_groups, 0, -1) if channels % g == 0)


def conv_head(in_channels: int, num_conv_layers: int = 2, patch_logits: bool = False) -> nn.Sequential:
    if num_conv_layers < 2:
        raise ValueError(f"num_conv_layers must be >= 2, got {num_conv_layers}")
    layers: list[nn.Module] = []
    ch_in, ch_out = in_channels, max(in_channels // 2, 1)
    for _ in range(num_conv_layers - 1):
        layers += [nn.Conv2d(ch_in, ch_out, kernel_size=4, stride=2, padding=1),
                   nn.GroupNorm(group_norm_groups(ch_out), ch_out), nn.LeakyReLU(0.2)]
        ch_in, ch_out = ch_out, max(ch_out // 2, min(64, ch_out))
    layers.append(nn.Conv2d(ch_in, 1, kernel_size=1))
    if not patch_logits:
        layers.append(nn.AdaptiveAvgPool2d(1))
    layers.append(nn.Flatten())
    return nn.Sequential(*layers)


class FeatureDiscriminator(nn.Module):
    """Logits (B, n) from teacher patch features.

    Args:
        in_channels: teacher width (``net.hidden_size``).
        num_blocks: teacher patch depth (``net.patch_depth``); picks the middle block by default.
        feature_blocks: 0-based patch blocks to tap; None → ``(num_blocks // 2,)`` (block 7 of 14).
        num_conv_layers, patch_logits: head shape (see module docstring).
    """

    def __init__(self, in_channels: int, num_blocks: int, feature_blocks: Sequence[int] | None = None,
                 num_conv_layers: int = 2, patch_logits: bool = False):
        super().__init__()
        if feature_blocks is None:
            blocks = (num_blocks // 2,)
        else:
            blocks = tuple(sorted({int(b) for b in feature_blocks}))
        if not blocks or any(not 0 <= b < num_blocks for b in blocks):
            raise ValueError(f"feature_blocks {feature_blocks} must be non-empty indices in "
                             f"0..{num_blocks - 1}")
        self.feature_blocks = blocks
        self.heads = nn.ModuleList(conv_head(in_channels, num_conv_layers, patch_logits) for _ in blocks)

    def forward(self, features: Mapping[int, torch.Tensor] | Iterable[torch.Tensor]) -> torch.Tensor:
        if isinstance(features, Mapping):
            feats = [features[b] for b in self.feature_blocks]
        else:
            feats = list(features)
        if len(feats) != len(self.heads):
            raise ValueError(f"expected {len(self.heads)} feature maps (blocks {self.feature_blocks}), "
                             f"got {len(feats)}")
        return torch.cat([head(f.float()) for head, f in zip(self.heads, feats)], dim=1)
