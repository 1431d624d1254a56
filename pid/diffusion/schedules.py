"""Sampling time grids (t = 1 noise → t = 0 data). Every grid is a 1-D tensor ending at 0.

* Teacher (multistep ODE): the uniform grid ``linspace(t_max, 0, N + 1)`` pushed through the
  time shift ``s t / (1 + (s - 1) t)`` — the same shift used at training time, so
  ``shift = resolution_shift(H, W)`` matches what the teacher saw.
* Student (DMD2, 4 steps): the fixed list ``(0.999, 0.866, 0.634, 0.342)`` then 0.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .flow import shift_time

__all__ = ["STUDENT_T_LIST", "teacher_timesteps", "student_timesteps"]

#: PiD's 4-step student schedule (without the terminal 0).
STUDENT_T_LIST: tuple[float, ...] = (0.999, 0.866, 0.634, 0.342)


def teacher_timesteps(
    num_steps: int,
    shift: float = 1.0,
    t_max: float = 1.0,
    device=None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``num_steps + 1`` times from ``shift_time(t_max, shift)`` down to exactly 0.

    Built in float64, then cast. Strictly decreasing for ``num_steps >= 1`` and ``t_max > 0``.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not 0.0 < t_max <= 1.0:
        raise ValueError(f"t_max must be in (0, 1], got {t_max}")
    t = torch.linspace(t_max, 0.0, num_steps + 1, dtype=torch.float64)
    t = shift_time(t, shift)
    t[-1] = 0.0
    return t.to(device=device, dtype=dtype)


def student_timesteps(
    t_list: Sequence[float] = STUDENT_T_LIST,
    num_steps: int | None = None,
    device=None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``t_list`` followed by 0, e.g. ``[0.999, 0.866, 0.634, 0.342, 0]``.

    ``num_steps`` smaller than ``len(t_list)`` subsamples the full grid (with its 0) evenly,
    always keeping the first and last entries (PiD's rule): 2 steps → ``[0.999, 0.634, 0]``,
    1 step → ``[0.999, 0]``.
    """
    full = torch.tensor([*map(float, t_list), 0.0], dtype=torch.float64)
    if len(full) < 2:
        raise ValueError("t_list must not be empty")
    if not bool((full[1:] < full[:-1]).all()):
        raise ValueError(f"t_list must be strictly decreasing and positive, got {list(t_list)}")
    if num_steps is not None and num_steps != len(full) - 1:
        if not 1 <= num_steps <= len(full) - 1:
            raise ValueError(f"num_steps must be in [1, {len(full) - 1}], got {num_steps}")
        idx = torch.linspace(0, len(full) - 1, num_steps + 1, dtype=torch.float64).round().long()
        full = full[idx]
    return full.to(device=device, dtype=dtype)
