"""Rectified-flow algebra: interpolation, converters, time shift, training-t sampling."""

import math

import pytest
import torch

from pid.diffusion import flow


def _rand(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def test_interpolate_endpoints_and_velocity():
    x0, eps = _rand(3, 2, 4, 4, seed=1), _rand(3, 2, 4, 4, seed=2)
    assert torch.equal(flow.interpolate(x0, eps, torch.zeros(3, dtype=torch.float64)), x0)
    assert torch.equal(flow.interpolate(x0, eps, torch.ones(3, dtype=torch.float64)), eps)
    assert torch.equal(flow.interpolate(x0, eps, 0.0), x0)
    torch.testing.assert_close(flow.interpolate(x0, eps, 0.5), 0.5 * (x0 + eps))
    assert torch.equal(flow.velocity(x0, eps), eps - x0)
    # dx_t/dt = v: finite difference in t
    t, h = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64), 1e-6
    fd = (flow.interpolate(x0, eps, t + h) - flow.interpolate(x0, eps, t - h)) / (2 * h)
    torch.testing.assert_close(fd, flow.velocity(x0, eps), rtol=1e-6, atol=1e-6)


def test_interpolate_broadcasts_per_sample_t():
    x0, eps = _rand(3, 2, 4, 4, seed=1), _rand(3, 2, 4, 4, seed=2)
    t = torch.tensor([0.1, 0.5, 0.8], dtype=torch.float64)
    out = flow.interpolate(x0, eps, t)
    for i in range(3):
        torch.testing.assert_close(out[i], (1 - t[i]) * x0[i] + t[i] * eps[i])


def test_converters_round_trip_float64():
    x0, eps = _rand(5, 3, 6, 6, seed=3), _rand(5, 3, 6, 6, seed=4)
    t = torch.tensor([0.05, 0.3, 0.5, 0.7, 0.95], dtype=torch.float64)
    x_t = flow.interpolate(x0, eps, t)
    v = flow.velocity(x0, eps)
    tol = dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(flow.x0_from_v(x_t, v, t), x0, **tol)
    torch.testing.assert_close(flow.eps_from_v(x_t, v, t), eps, **tol)
    torch.testing.assert_close(flow.v_from_x0(x_t, x0, t), v, **tol)
    torch.testing.assert_close(flow.v_from_eps(x_t, eps, t), v, **tol)
    torch.testing.assert_close(flow.x0_from_eps(x_t, eps, t), x0, **tol)
    torch.testing.assert_close(flow.eps_from_x0(x_t, x0, t), eps, **tol)
    # chained: v -> x0 -> v and v -> eps -> v
    torch.testing.assert_close(flow.v_from_x0(x_t, flow.x0_from_v(x_t, v, t), t), v, **tol)
    torch.testing.assert_close(flow.v_from_eps(x_t, flow.eps_from_v(x_t, v, t), t), v, **tol)


def test_edm_output_is_the_velocity_of_the_preconditioned_x0():
    """v_from_edm_output: x̂₀ = c_skip·x_t + c_out·F (Karras et al. 2022, Table 1, on the flow path); the
    optimal F gives the true v for every t in [0, 1] (no division by t), and t = 1 is x̂₀ prediction."""
    x0, eps = 0.5 * _rand(5, 3, 6, 6, seed=5), _rand(5, 3, 6, 6, seed=6)
    t = torch.tensor([0.0, 0.05, 0.5, 0.9, 1.0], dtype=torch.float64)
    x_t, sd = flow.interpolate(x0, eps, t), 0.5
    tt = t.view(-1, 1, 1, 1)
    d = tt**2 + (1 - tt) ** 2 * sd**2
    c_skip, c_out = (1 - tt) * sd**2 / d, tt * sd / d.sqrt()
    f_opt = (x0 - c_skip * x_t) / c_out.clamp_min(1e-300)
    f_opt[0] = -eps[0]  # t = 0: x̂₀ = x_t = x₀ whatever F; v = −x_t − F, so F = −ε
    torch.testing.assert_close(flow.v_from_edm_output(x_t, f_opt, t, sd), flow.velocity(x0, eps))
    # t = 1: v = x_t − x̂₀ with x̂₀ = σ_d·F
    f = _rand(1, 3, 6, 6, seed=7)
    torch.testing.assert_close(flow.v_from_edm_output(x_t[4:], f, 1.0, sd), x_t[4:] - sd * f)


def test_converters_keep_fp32_for_low_precision_inputs():
    x = torch.randn(2, 3, 4, 4).bfloat16()
    out = flow.x0_from_v(x, x, torch.full((2,), 0.5))
    assert out.dtype == torch.float32


def test_resolution_shift_values():
    assert flow.resolution_shift(2048, 2048) == pytest.approx(6.0)
    assert flow.resolution_shift(1024, 1024) == pytest.approx(6.0 / math.sqrt(2.0))
    assert flow.resolution_shift(4096, 4096) == pytest.approx(6.0 * math.sqrt(2.0))
    # aspect ratio only through sqrt(HW): 2688x1536 ~ sqrt(4128768)=2031.9
    assert flow.resolution_shift(1536, 2688) == pytest.approx(6.0 * math.sqrt(math.sqrt(1536 * 2688) / 2048))
    assert flow.resolution_shift(512, 512, base=3.0, ref_size=512) == pytest.approx(3.0)


def test_shift_time_monotone_fixed_points_and_inverse():
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    for s in (0.5, 1.0, 3.0, 6.0):
        ts = flow.shift_time(t, s)
        assert ts[0] == 0.0 and ts[-1] == 1.0
        assert bool((ts[1:] > ts[:-1]).all())
        torch.testing.assert_close(flow.unshift_time(ts, s), t, rtol=0, atol=1e-12)
        # SNR view: t'/(1-t') = s * t/(1-t)
        mid = t[1:-1]
        smid = flow.shift_time(mid, s)
        torch.testing.assert_close(smid / (1 - smid), s * mid / (1 - mid))
    assert bool((flow.shift_time(t[1:-1], 6.0) > t[1:-1]).all())  # s > 1 pushes towards noise
    assert flow.shift_time(0.5, 3.0) == pytest.approx(0.75)
    torch.testing.assert_close(flow.shift_time(t, 1.0), t)


def test_logit_normal_statistics_and_seed():
    g = torch.Generator().manual_seed(0)
    t = flow.sample_logit_normal(200_000, generator=g)
    assert t.dtype == torch.float32 and t.shape == (200_000,)
    assert 0 < t.min() and t.max() < 1
    logit = torch.log(t / (1 - t))
    assert abs(logit.mean().item()) < 0.01 and abs(logit.std().item() - 1) < 0.01
    t2 = flow.sample_logit_normal(200_000, mean=0.5, std=2.0, generator=torch.Generator().manual_seed(1))
    logit2 = torch.log(t2 / (1 - t2))
    assert abs(logit2.mean().item() - 0.5) < 0.03 and abs(logit2.std().item() - 2) < 0.03
    a = flow.sample_logit_normal(8, generator=torch.Generator().manual_seed(7))
    b = flow.sample_logit_normal(8, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_sample_training_t_is_shifted_logit_normal():
    n = 4096
    base = flow.sample_logit_normal(n, generator=torch.Generator().manual_seed(3))
    t = flow.sample_training_t(n, 2048, 2048, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(t, flow.shift_time(base, 6.0))
    t1k = flow.sample_training_t(n, 1024, 1024, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(t1k, flow.shift_time(base, 6.0 / math.sqrt(2)))
    t_fixed = flow.sample_training_t(n, 2048, 2048, shift=1.0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(t_fixed, base)
    # median of logit-normal(0,1) is 0.5; shifted median is shift_time(0.5, 6) = 6/7
    assert t.median().item() == pytest.approx(6 / 7, abs=0.02)
