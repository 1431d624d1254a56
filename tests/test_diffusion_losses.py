"""Flow-matching MSE and the auxiliary YCbCr Charbonnier RGB loss."""

import pytest
import torch

from pid.diffusion import aux_rgb_loss, flow_matching_loss, losses, rgb_to_ycbcr, velocity, ycbcr_charbonnier


def test_flow_matching_loss_values_and_reductions():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    assert flow_matching_loss(a, a).item() == 0.0
    torch.testing.assert_close(flow_matching_loss(a, b), ((a - b) ** 2).mean())
    torch.testing.assert_close(flow_matching_loss(a, b, "sum"), ((a - b) ** 2).sum())
    assert flow_matching_loss(a, b, "none").shape == a.shape
    torch.testing.assert_close(flow_matching_loss(a, b, "per_sample"), ((a - b) ** 2).mean(dim=(1, 2, 3)))
    # bf16 inputs are reduced in fp32
    assert flow_matching_loss(a.bfloat16(), b.bfloat16()).dtype == torch.float32
    with pytest.raises(ValueError):
        flow_matching_loss(a, b, "max")
    # the oracle velocity has zero loss
    x0, eps = a, b
    assert flow_matching_loss(velocity(x0, eps), eps - x0).item() == 0.0


def test_flow_matching_loss_gradient():
    v = torch.zeros(1, 1, 2, 2, requires_grad=True)
    target = torch.ones(1, 1, 2, 2)
    flow_matching_loss(v, target).backward()
    torch.testing.assert_close(v.grad, torch.full_like(v, -2.0 / 4))


def test_ycbcr_conversion():
    white = torch.ones(1, 3, 1, 1)
    expected = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(rgb_to_ycbcr(white), expected, atol=1e-6, rtol=0)
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(rgb_to_ycbcr(red).flatten(), torch.tensor([0.299, -0.168736, 0.5]))


def test_ycbcr_charbonnier():
    g = torch.Generator().manual_seed(1)
    p = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    assert torch.equal(ycbcr_charbonnier(p, p), torch.zeros(2))
    # a grey shift of d in [0,1] space (RGB + 2d in [-1,1]) moves only Y, by d: the mean over
    # (Y, Cb, Cr) is (sqrt((0.25 d)^2 + eps^2) - eps) / 3
    d, eps = 0.2, 1e-3
    q = p + 2 * d
    expected = (((0.25 * d) ** 2 + eps**2) ** 0.5 - eps) / 3
    got = ycbcr_charbonnier(q, p, eps=eps)
    torch.testing.assert_close(got, torch.full((2,), expected), rtol=1e-4, atol=1e-6)
    # chroma errors weigh more than luma errors of the same RGB size
    chroma = p.clone()
    chroma[:, 0] += 0.2
    chroma[:, 2] -= 0.2
    assert (ycbcr_charbonnier(chroma, p) > ycbcr_charbonnier(p + 0.2, p)).all()


def test_aux_rgb_loss_sigma_scaling():
    g = torch.Generator().manual_seed(2)
    pred = torch.rand(3, 3, 8, 8, generator=g) * 2 - 1
    target = torch.rand(3, 3, 8, 8, generator=g) * 2 - 1
    per = ycbcr_charbonnier(pred, target)
    assert aux_rgb_loss(pred, pred, torch.rand(3)).item() == 0.0  # equal inputs
    assert aux_rgb_loss(pred, target, torch.ones(3)).item() == 0.0  # σ = 1 everywhere
    assert aux_rgb_loss(pred, target, 1.0, normalize=False).item() == 0.0
    sigma = torch.tensor([0.0, 0.5, 1.0])
    w = 1 - sigma
    torch.testing.assert_close(aux_rgb_loss(pred, target, sigma), 0.8 * (per * w).sum() / w.sum())
    torch.testing.assert_close(aux_rgb_loss(pred, target, sigma, normalize=False), 0.8 * (per * w).mean())
    torch.testing.assert_close(aux_rgb_loss(pred, target, None, weight=1.0), per.mean())
    keep = torch.tensor([True, False, True])
    wk = w * keep
    got = aux_rgb_loss(pred, target, sigma, keep=keep)
    torch.testing.assert_close(got, 0.8 * (per * wk).sum() / wk.sum())


def test_aux_rgb_loss_resizes_target_and_backprops():
    g = torch.Generator().manual_seed(3)
    small = torch.rand(2, 3, 4, 4, generator=g) * 2 - 1
    big = small.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # area-downsamples back to `small`
    assert aux_rgb_loss(small, big, torch.zeros(2)).item() == pytest.approx(0.0, abs=1e-7)
    pred = torch.zeros(2, 3, 4, 4, requires_grad=True)
    aux_rgb_loss(pred, big, torch.tensor([0.1, 0.4])).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0


def test_latent_consistency_sees_only_local_means_and_weighs_by_the_latent_noise():
    g = torch.Generator().manual_seed(0)
    hq = torch.randn(2, 3, 16, 16, generator=g)
    detail = torch.randn(2, 3, 16, 16, generator=g)
    cell_means = torch.nn.functional.avg_pool2d(detail, 8).repeat_interleave(8, -1).repeat_interleave(8, -2)
    detail = detail - cell_means
    assert losses.latent_consistency_loss(hq + detail, hq, pool=8) < 1e-12  # other detail, same 8×8 means
    shifted = hq + torch.tensor([0.5, 0.0]).view(2, 1, 1, 1)
    # the mean of 0.25 and 0
    assert losses.latent_consistency_loss(shifted, hq, pool=8).item() == pytest.approx(0.125)
    # w = 1 − σ: a sample with a fully noised latent (σ = 1) contributes nothing
    assert losses.latent_consistency_loss(shifted, hq, pool=8, sigma=torch.tensor([1.0, 0.0])).item() == 0.0
    only_first = losses.latent_consistency_loss(shifted, hq, pool=8, sigma=torch.tensor([0.0, 1.0]))
    assert only_first.item() == pytest.approx(0.25)
    x0 = shifted.clone().requires_grad_(True)
    target = hq.clone().requires_grad_(True)
    losses.latent_consistency_loss(x0, target, pool=4).backward()
    assert x0.grad[0].abs().sum() > 0 and target.grad is None  # the real image is a constant
    dropped = losses.latent_consistency_loss(shifted, hq, pool=8, keep=torch.tensor([False, True]))
    assert dropped.item() == 0.0  # a dropped latent (CFG) fixes nothing
    with pytest.raises(ValueError, match="pool"):
        losses.latent_consistency_loss(hq, hq, pool=5)
