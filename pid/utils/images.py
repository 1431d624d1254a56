"""Image conversions shared by training, sampling and evaluation.

Convention: networks see float images in [-1, 1]; loaders and files hold uint8 in [0, 255].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def to_signed(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float32 [-1, 1]."""
    return images_uint8.float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] → uint8 [0, 255] (rounded, clamped)."""
    return images.float().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def downsample(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Bicubic, antialiased ↓factor: how PiD makes the low-res side of a training pair (docs/method.md §3)."""
    h, w = images.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(f"image size {h}×{w} is not divisible by the downsampling factor {factor}")
    out = F.interpolate(images.float(), size=(h // factor, w // factor), mode="bicubic", antialias=True,
                        align_corners=False)
    return out.clamp(-1.0, 1.0)


def upsample(images: torch.Tensor, factor: int, mode: str = "bicubic") -> torch.Tensor:
    """Plain interpolation ↑factor: the "native decode + bicubic" baseline's second stage."""
    h, w = images.shape[-2:]
    out = F.interpolate(images.float(), size=(h * factor, w * factor), mode=mode,
                        align_corners=False if mode in ("bilinear", "bicubic") else None)
    return out.clamp(-1.0, 1.0)
