"""The one input convention of every metric in ``pid.eval``, and the crops some metrics are computed on.

Every metric function and metric class takes a batch of shape (B, 3, H, W), either

- ``uint8`` in [0, 255], or
- floating point in [-1, 1], the project's convention (what decoders return).

:func:`as_metric_images` is the single gate: it converts either form to the one a metric computes
on and refuses floats outside [-1, 1] (beyond one uint8 step of rounding slack) with a ValueError
that states the range. Without it a [0, 255] float batch would be clamped to white and scored as
such. Floats in [0, 1] lie inside [-1, 1] and cannot be told apart: map them with ``x * 2 - 1``.

Crops: :func:`crop_positions` draws seeded crop corners once for an evaluation set (identical for
the reference and every method); :func:`grid_positions` tiles an image; :func:`take_crops` cuts
either.
"""

from __future__ import annotations

from typing import Literal

import torch

FLOAT_RANGE = (-1.0, 1.0)
SLACK = 2.0 / 255.0  # one uint8 step in [-1, 1] units: values this far outside are clamped, not refused

Positions = list[list[tuple[int, int]]]


Kind = Literal["float", "double", "uint8"]


def as_metric_images(images: torch.Tensor, dtype: Kind = "float", name: str = "images") -> torch.Tensor:
    """``images`` (B, 3, H, W), uint8 [0, 255] or float [-1, 1], as float32 (``"float"``) or float64
    (``"double"``) in [-1, 1], or as uint8 (``"uint8"``).

    Raises TypeError for other dtypes and ValueError for another shape, a non-finite value or
    floats outside [-1, 1]; ``name`` says which argument in the message.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{name}: expected a (B, 3, H, W) batch, got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        if dtype == "uint8":
            return images
        return images.to(torch.float64 if dtype == "double" else torch.float32).div(127.5).sub(1.0)
    if not images.is_floating_point():
        raise TypeError(f"{name}: expected uint8 in [0, 255] or floats in [-1, 1], got {images.dtype}")
    x = images.detach().to(torch.float64 if dtype == "double" else torch.float32)
    if x.numel():
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name}: non-finite values (NaN or inf) in a batch of images")
        lo, hi = x.min().item(), x.max().item()
        if lo < FLOAT_RANGE[0] - SLACK or hi > FLOAT_RANGE[1] + SLACK:
            hint = (" — this looks like a [0, 255] batch: pass it as uint8, or as x / 127.5 - 1"
                    if hi > 2.0 else "")
            raise ValueError(f"{name}: float images must lie in [-1, 1] (uint8 images in [0, 255]); "
                             f"got values in [{lo:.4g}, {hi:.4g}]{hint}")
    x = x.clamp(*FLOAT_RANGE)
    return x.add(1.0).mul(127.5).round().to(torch.uint8) if dtype == "uint8" else x


def as_metric_pair(pred: torch.Tensor, gt: torch.Tensor,
                   dtype: Kind = "float") -> tuple[torch.Tensor, torch.Tensor]:
    """Both sides of a paired metric through :func:`as_metric_images`; their shapes must match."""
    p, g = as_metric_images(pred, dtype, "pred"), as_metric_images(gt, dtype, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred and gt must have the same shape, got {tuple(p.shape)} and {tuple(g.shape)}")
    return p, g


def crop_positions(height: int, width: int, patch: int, per_image: int, num_images: int,
                   seed: int = 0) -> Positions:
    """Per image, ``per_image`` (y, x) corners of ``patch``² crops, uniform and reproducible for a seed.

    The positions depend only on (size, patch, per_image, num_images, seed): the same pixels are cut
    from the reference and from every method. Images smaller than the patch give the whole image.
    """
    g = torch.Generator().manual_seed(int(seed))
    out = []
    for _ in range(num_images):
        if height < patch or width < patch:
            out.append([(0, 0)])
            continue
        ys = torch.randint(0, height - patch + 1, (per_image,), generator=g).tolist()
        xs = torch.randint(0, width - patch + 1, (per_image,), generator=g).tolist()
        out.append(list(zip(ys, xs)))
    return out


def grid_positions(height: int, width: int, patch: int, num_images: int) -> Positions:
    """Corners of the non-overlapping ``patch``² tiles anchored at the top-left (remainder dropped),
    row by row, the same for each image; the whole image when it is smaller than ``patch``."""
    if height < patch or width < patch:
        return [[(0, 0)]] * num_images
    tiles = [(y, x) for y in range(0, height - patch + 1, patch) for x in range(0, width - patch + 1, patch)]
    return [tiles] * num_images


def take_crops(images: torch.Tensor, positions: Positions, patch: int) -> torch.Tensor:
    """Stack the ``patch``² crops at ``positions`` (one list of corners per image)."""
    crops = []
    for img, pos in zip(images, positions):
        p_h, p_w = min(patch, img.shape[-2]), min(patch, img.shape[-1])
        crops += [img[:, y:y + p_h, x:x + p_w] for (y, x) in pos]
    return torch.stack(crops)


def grid_patches(images: torch.Tensor, patch: int) -> torch.Tensor:
    """Every image tiled into non-overlapping ``patch``² crops (:func:`grid_positions`)."""
    h, w = images.shape[-2:]
    return take_crops(images, grid_positions(h, w, patch, len(images)), patch)
