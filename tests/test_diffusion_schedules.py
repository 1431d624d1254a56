"""Sampling time grids."""

import pytest
import torch

from pid.diffusion import schedules
from pid.diffusion.flow import shift_time


@pytest.mark.parametrize("shift", [1.0, 3.0, 6.0])
@pytest.mark.parametrize("n", [1, 4, 28, 50])
def test_teacher_timesteps_endpoints_and_monotone(n, shift):
    ts = schedules.teacher_timesteps(n, shift)
    assert ts.shape == (n + 1,) and ts.dtype == torch.float32
    assert ts[0].item() == 1.0 and ts[-1].item() == 0.0
    assert bool((ts[1:] < ts[:-1]).all())


def test_teacher_timesteps_are_shifted_uniform_grid():
    ts = schedules.teacher_timesteps(10, 3.0, dtype=torch.float64)
    torch.testing.assert_close(ts, shift_time(torch.linspace(1, 0, 11, dtype=torch.float64), 3.0))
    assert ts[5].item() == pytest.approx(0.75)  # shift_time(0.5, 3)
    unshifted = schedules.teacher_timesteps(4, 1.0, dtype=torch.float64)
    torch.testing.assert_close(unshifted, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64))
    t_max = schedules.teacher_timesteps(4, 1.0, t_max=0.8)
    assert t_max[0].item() == pytest.approx(0.8) and t_max[-1].item() == 0.0
    with pytest.raises(ValueError):
        schedules.teacher_timesteps(0)


def test_student_timesteps():
    assert schedules.STUDENT_T_LIST == (0.999, 0.866, 0.634, 0.342)
    ts = schedules.student_timesteps()
    torch.testing.assert_close(ts, torch.tensor([0.999, 0.866, 0.634, 0.342, 0.0]))
    torch.testing.assert_close(schedules.student_timesteps(num_steps=2), torch.tensor([0.999, 0.634, 0.0]))
    # the official student sampler: one step is a single call at t = 1.0, not the list's first entry
    torch.testing.assert_close(
        schedules.student_timesteps(num_steps=1), torch.tensor([1.0, 0.0]), atol=0, rtol=0
    )
    torch.testing.assert_close(
        schedules.student_timesteps(num_steps=1, one_step_t=0.999), torch.tensor([0.999, 0.0])
    )
    torch.testing.assert_close(
        schedules.student_timesteps(num_steps=3), torch.tensor([0.999, 0.866, 0.342, 0.0])
    )
    assert schedules.student_timesteps(num_steps=3).shape == (4,)
    torch.testing.assert_close(schedules.student_timesteps([0.9, 0.5]), torch.tensor([0.9, 0.5, 0.0]))
    with pytest.raises(ValueError):
        schedules.student_timesteps([0.5, 0.9])
