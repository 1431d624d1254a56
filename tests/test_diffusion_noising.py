"""Latent noising (flow / VP forms), σ sampling, CFG keep masks, VE <-> VP frames."""

import pytest
import torch

from pid.diffusion import noising


def test_noise_latent_forms_match_formulas():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 16, 8, 8, generator=g, dtype=torch.float64)
    xi = torch.randn(4, 16, 8, 8, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.0, 0.2, 0.5, 0.8], dtype=torch.float64)
    flow = noising.noise_latent(z, sigma, xi, form="flow")
    vp = noising.noise_latent(z, sigma, xi, form="vp")
    for i, s in enumerate(sigma.tolist()):
        torch.testing.assert_close(flow[i], (1 - s) * z[i] + s * xi[i])
        torch.testing.assert_close(vp[i], (1 - s * s) ** 0.5 * z[i] + s * xi[i])
    assert torch.equal(flow[0], z[0]) and torch.equal(vp[0], z[0])  # σ = 0 is the clean latent
    # σ = 1 is pure noise in both forms; scalar σ broadcasts
    torch.testing.assert_close(noising.noise_latent(z, 1.0, xi, form="flow"), xi)
    torch.testing.assert_close(noising.noise_latent(z, 1.0, xi, form="vp"), xi)


def test_vp_preserves_unit_variance_flow_does_not():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, 4, 128, 128, generator=g)  # unit-variance latent
    for s in (0.3, 0.6, 0.9):
        vp = noising.noise_latent(z, s, form="vp", generator=g)
        flow = noising.noise_latent(z, s, form="flow", generator=g)
        assert vp.var().item() == pytest.approx(1.0, abs=0.02)
        assert flow.var().item() == pytest.approx((1 - s) ** 2 + s**2, abs=0.02)


def test_noise_latent_dtype_seed_and_errors():
    z = torch.randn(2, 4, 8, 8).bfloat16()
    out = noising.noise_latent(z, torch.tensor([0.1, 0.7]), generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.bfloat16 and out.shape == z.shape
    a = noising.noise_latent(z.float(), 0.5, generator=torch.Generator().manual_seed(3))
    b = noising.noise_latent(z.float(), 0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    with pytest.raises(ValueError):
        noising.noise_latent(z, 0.5, form="ve")
    with pytest.raises(ValueError):
        noising.noise_latent(z, torch.ones(3), form="flow")


def test_sample_latent_sigma_fraction_and_range():
    n = 100_000
    s = noising.sample_latent_sigma(n, sigma_max=0.8, p=0.75, generator=torch.Generator().manual_seed(0))
    assert s.shape == (n,) and s.dtype == torch.float32
    noised = s > 0
    assert noised.float().mean().item() == pytest.approx(0.75, abs=0.01)
    assert s.min().item() >= 0.0 and s.max().item() < 0.8
    # the nonzero levels are U(0, 0.8): mean 0.4, std 0.8/sqrt(12)
    assert s[noised].mean().item() == pytest.approx(0.4, abs=0.01)
    assert s[noised].std().item() == pytest.approx(0.8 / 12**0.5, abs=0.01)
    assert not noising.sample_latent_sigma(100, p=0.0).any()
    assert (noising.sample_latent_sigma(1000, p=1.0) > 0).all()
    lo = noising.sample_latent_sigma(1000, sigma_min=0.2, sigma_max=0.4, p=1.0)
    assert lo.min() >= 0.2 and lo.max() < 0.4


def test_keep_mask_rate():
    m = noising.keep_mask(100_000, 0.1, generator=torch.Generator().manual_seed(0))
    assert m.dtype == torch.bool and m.shape == (100_000,)
    assert m.float().mean().item() == pytest.approx(0.9, abs=0.005)
    assert noising.keep_mask(50, 0.0).all() and not noising.keep_mask(50, 1.0).any()
    a = noising.keep_mask(64, 0.1, generator=torch.Generator().manual_seed(5))
    b = noising.keep_mask(64, 0.1, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_ve_vp_frames():
    g = torch.Generator().manual_seed(2)
    z0 = torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64)
    xi = torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64)
    sigma_ve = torch.tensor([0.1, 1.0, 14.6], dtype=torch.float64)
    x_ve = z0 + sigma_ve.view(-1, 1, 1, 1) * xi  # Euler/VE-frame state
    z_vp, sigma_vp = noising.ve_to_vp(x_ve, sigma_ve)
    # the converted state is exactly the VP noising of the clean latent at sigma_vp
    torch.testing.assert_close(z_vp, noising.noise_latent(z0, sigma_vp, xi, form="vp"))
    torch.testing.assert_close(sigma_vp, sigma_ve / (sigma_ve**2 + 1).sqrt())
    assert bool((sigma_vp < 1).all())
    back, sigma_back = noising.vp_to_ve(z_vp, sigma_vp)
    torch.testing.assert_close(back, x_ve)
    torch.testing.assert_close(sigma_back, sigma_ve)
    # float sigma works too
    zf, sf = noising.ve_to_vp(x_ve, 1.0)
    assert sf == pytest.approx(2**-0.5)
    torch.testing.assert_close(zf, x_ve * 2**-0.5)
