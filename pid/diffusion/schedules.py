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

__all__ = ["STUDENT_T_LIST", "teacher_timesteps", "official_teacher_timesteps", "student_timesteps"]

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
    one_step_t: float = 1.0,
) -> Tensor:
    """``t_list`` followed by 0, e.g. ``[0.999, 0.866, 0.634, 0.342, 0]``.

    ``num_steps`` smaller than ``len(t_list)`` subsamples the full grid (with its 0) at
    ``round(linspace(0, len, num_steps + 1))`` (the official ``_get_t_list``): 2 steps →
    ``[0.999, 0.634, 0]``, 3 steps → ``[0.999, 0.866, 0.342, 0]``. One step is a single call at
    ``one_step_t`` (1.0 in the official student sampler, not the list's first entry): ``[1.0, 0]``.
    """
    full = torch.tensor([*map(float, t_list), 0.0], dtype=torch.float64)
    if len(full) < 2:
        raise ValueError("t_list must not be empty")
    if not bool((full[1:] < full[:-1]).all()):
        raise ValueError(f"t_list must be strictly decreasing and positive, got {list(t_list)}")
    if num_steps is not None and num_steps != len(full) - 1:
        if not 1 <= num_steps <= len(full) - 1:
            raise ValueError(f"num_steps must be in [1, {len(full) - 1}], got {num_steps}")
        if num_steps == 1:
            if not 0.0 < one_step_t <= 1.0:
                raise ValueError(f"one_step_t must be in (0, 1], got {one_step_t}")
            full = torch.tensor([float(one_step_t), 0.0], dtype=torch.float64)
        else:
            idx = torch.linspace(0, len(full) - 1, num_steps + 1, dtype=torch.float64).round().long()
            full = full[idx]
    return full.to(device=device, dtype=dtype)


def official_teacher_timesteps(num_steps: int, shift: float = 1.0, device=None) -> Tensor:
    """The official teacher grid (DPM-Solver ``time_uniform_flow``, t_T = 1, t_0 = 1/1000), float32.

    ``1 - linspace(1, 0.001, N + 1)`` pushed through the shift and reversed: from
    ``shift_time(0.999, shift)`` (0.999833 at shift 6) down to exactly 0. Computed in float32 as the
    release does, so the grid is bit-identical to the official one.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift}")
    s = 1.0 - torch.linspace(1.0, 0.001, num_steps + 1, dtype=torch.float32)
    s = (shift * s / (1 + (shift - 1) * s)).flip(0)
    return s.to(device=device)
