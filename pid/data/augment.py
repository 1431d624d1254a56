"""Batch augmentations applied on the device before pairs are made (HQ → LQ → latent).

A decoder learns a local map from latent to pixels; with few training images it memorises their
colours and orientations instead. Rotating by multiples of 90° and permuting the RGB channels keep
every local structure an image has while multiplying the layouts and colours the map sees. Both act
on the HQ crop before it is downsampled and encoded, so each pair stays exact.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["augment_batch"]


def augment_batch(x: Tensor, rot90: bool = False, channel_permute: bool = False,
                  generator: torch.Generator | None = None) -> Tensor:
    """Per sample: a random rotation by k·90° (k ∈ {0, 2} when H ≠ W, so the batch keeps its shape) and
    a random permutation of the channels. Returns a new tensor; ``x`` is (B, C, H, W)."""
    if not (rot90 or channel_permute):
        return x
    b, c, h, w = x.shape
    out = []
    for i in range(b):
        xi = x[i]
        if rot90:
            k = int(torch.randint(0, 4 if h == w else 2, (1,), generator=generator)) * (1 if h == w else 2)
            xi = torch.rot90(xi, k, dims=(-2, -1))
        if channel_permute:
            xi = xi[torch.randperm(c, generator=generator).to(xi.device)]
        out.append(xi)
    return torch.stack(out)
