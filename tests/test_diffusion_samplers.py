"""Samplers on analytic problems whose exact velocity field is known in closed form.

Data N(mu, s^2) per dimension. With x_t = (1-t) x0 + t eps, x_t ~ N((1-t) mu, var_t),
var_t = (1-t)^2 s^2 + t^2, and the optimal velocity E[eps - x0 | x_t] is

    E[x0 | x_t]  = mu + (1-t) s^2 / var_t * (x_t - (1-t) mu)
    E[eps | x_t] = t / var_t * (x_t - (1-t) mu).

The probability-flow ODE maps noise eps at t=1 to mu + s*eps at t=0 (exact answer).
s = 0 is a point mass at x* = mu: v = (x_t - x*) / t and E[x0 | x_t] = x* for every t.
"""

import pytest
import torch

from pid.diffusion import flow, samplers, schedules


def gaussian_velocity(mu, s):
    def model(x, t):
        assert t.shape == (x.shape[0],)
        tt = t.view(-1, *[1] * (x.ndim - 1))
        var = (1 - tt) ** 2 * s * s + tt**2
        r = x - (1 - tt) * mu
        return tt / var * r - (mu + (1 - tt) * s * s / var * r)

    return model


def _noise(seed=0, shape=(4, 3, 8, 8)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_euler_lands_on_gaussian_flow_map():
    mu, s = 0.7, 0.5
    noise = _noise()
    exact = mu + s * noise
    errs = []
    for n in (25, 50, 100):
        out = samplers.sample_euler(gaussian_velocity(mu, s), noise, schedules.teacher_timesteps(n, 1.0))
        errs.append((out - exact).abs().max().item())
    assert errs[1] < 0.06
    # first-order method: the error halves when the step count doubles
    assert 1.8 < errs[0] / errs[1] < 2.2 and 1.8 < errs[1] / errs[2] < 2.2


def test_euler_with_shifted_grid_and_float32():
    mu, s = -0.3, 0.8
    noise64 = _noise(1)
    noise = noise64.float()
    ts = schedules.teacher_timesteps(50, 3.0)
    out = samplers.sample_euler(gaussian_velocity(mu, s), noise, ts)
    out64 = samplers.sample_euler(gaussian_velocity(mu, s), noise64, ts.double())
    assert out.dtype == torch.float32 and out64.dtype == torch.float64
    torch.testing.assert_close(out.double(), out64, rtol=0, atol=1e-4)  # fp32 state is accurate
    assert (out - (mu + s * noise)).abs().max().item() < 0.15


def test_heun_is_second_order():
    mu, s = 0.7, 0.5
    noise = _noise(2)
    exact = mu + s * noise
    model = gaussian_velocity(mu, s)
    e25, e50 = (
        (samplers.sample_heun(model, noise, schedules.teacher_timesteps(n)) - exact).abs().max().item()
        for n in (25, 50)
    )
    assert e50 < 2e-3 and e25 / e50 > 3.0


def test_euler_is_exact_for_a_point_mass():
    x_star = _noise(3, (2, 3, 4, 4))
    model = lambda x, t: (x - x_star) / t.view(-1, 1, 1, 1)  # noqa: E731
    ts = schedules.teacher_timesteps(7, 2.0, dtype=torch.float64)
    out = samplers.sample_euler(model, _noise(4, (2, 3, 4, 4)), ts)
    torch.testing.assert_close(out, x_star, rtol=0, atol=1e-12)


def test_sde_with_oracle_recovers_point_and_uses_fresh_noise():
    x_star = _noise(5, (2, 3, 4, 4))
    model = lambda x, t: (x - x_star) / t.view(-1, 1, 1, 1)  # noqa: E731
    states, denoised = [], []

    def cb(d):
        states.append(d["x"].clone())
        denoised.append(d["denoised"].clone())

    ts = schedules.student_timesteps(dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    out = samplers.sample_sde(model, _noise(6, (2, 3, 4, 4)), ts, generator=gen, callback=cb)
    torch.testing.assert_close(out, x_star, rtol=0, atol=1e-12)
    assert len(states) == 4
    for d in denoised:
        torch.testing.assert_close(d, x_star, rtol=0, atol=1e-12)
    # intermediate states are (1 - t_next) x* + t_next * eps with a *fresh* eps each step
    eps = [flow.eps_from_x0(states[i], x_star, ts[i + 1].item()) for i in range(3)]
    for e in eps:
        assert abs(e.std().item() - 1) < 0.35
    assert not torch.allclose(eps[0], eps[1]) and not torch.allclose(eps[1], eps[2])
    torch.testing.assert_close(states[-1], x_star, rtol=0, atol=1e-12)


def test_sde_reproducible_with_generator_and_returns_last_prediction():
    mu, s = 0.2, 0.6
    noise = _noise(7)
    ts = schedules.student_timesteps()
    a = samplers.sample_sde(gaussian_velocity(mu, s), noise, ts, generator=torch.Generator().manual_seed(1))
    b = samplers.sample_sde(gaussian_velocity(mu, s), noise, ts, generator=torch.Generator().manual_seed(1))
    c = samplers.sample_sde(gaussian_velocity(mu, s), noise, ts, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # single step: plain x0 prediction x - t v at t0
    one = samplers.sample_sde(gaussian_velocity(mu, s), noise, [0.999, 0.0])
    t0 = torch.full((noise.shape[0],), 0.999, dtype=torch.float64)
    torch.testing.assert_close(one, flow.x0_from_v(noise, gaussian_velocity(mu, s)(noise, t0), t0))


def test_samplers_share_signature_and_count_calls():
    calls = []

    def model(x, t):
        calls.append(t.clone())
        return torch.zeros_like(x)

    noise = _noise(8, (3, 2, 4, 4))
    ts = schedules.teacher_timesteps(5)
    for name in ("euler", "heun", "sde"):
        calls.clear()
        out = samplers.get_sampler(name)(model, noise, ts, None, None)
        assert out.shape == noise.shape
        assert len(calls) == {"euler": 5, "heun": 9, "sde": 5}[name]
        assert all(c.shape == (3,) for c in calls)
        assert calls[0][0].item() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        samplers.get_sampler("dpm")
    with pytest.raises(ValueError):
        samplers.sample_euler(model, noise, [0.0, 1.0])
