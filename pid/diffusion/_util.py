"""Small tensor helpers shared by the diffusion modules (broadcasting, seeded draws)."""

from __future__ import annotations

import torch
from torch import Tensor


def append_dims(t: Tensor | float, ndim: int) -> Tensor | float:
    """Broadcast a per-sample value of shape (B,) to (B, 1, ..., 1) with ``ndim`` dims.

    Python floats and 0-d tensors are returned unchanged (they broadcast already).
    """
    if not isinstance(t, Tensor) or t.ndim == 0:
        return t
    if t.ndim > ndim:
        raise ValueError(f"cannot broadcast shape {tuple(t.shape)} to {ndim} dims")
    return t.reshape(t.shape + (1,) * (ndim - t.ndim))


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype we do diffusion arithmetic in: the inputs' promoted dtype, at least float32."""
    dtype = torch.float32
    for x in tensors:
        if isinstance(x, Tensor) and x.is_floating_point():
            dtype = torch.promote_types(dtype, x.dtype)
    return dtype


def _gen_device(generator: torch.Generator | None, device) -> torch.device:
    if generator is not None:
        return generator.device
    return torch.device(device) if device is not None else torch.device("cpu")


def rand(shape, generator=None, device=None, dtype=torch.float32) -> Tensor:
    """U[0, 1) draw that is reproducible under ``generator`` whatever ``device`` is asked for.

    The draw happens on the generator's device and is then moved, so a CPU generator can
    seed CUDA tensors (same numbers on every machine).
    """
    out = torch.rand(shape, generator=generator, device=_gen_device(generator, device), dtype=dtype)
    return out.to(device) if device is not None else out


def randn(shape, generator=None, device=None, dtype=torch.float32) -> Tensor:
    """N(0, 1) draw; see :func:`rand` for the generator/device rule."""
    out = torch.randn(shape, generator=generator, device=_gen_device(generator, device), dtype=dtype)
    return out.to(device) if device is not None else out


def randn_like(x: Tensor, generator=None) -> Tensor:
    """N(0, 1) with the shape, dtype and device of ``x``, drawn from ``generator`` if given."""
    return randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
