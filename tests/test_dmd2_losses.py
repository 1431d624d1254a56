"""DMD2 math on toy problems: VSD gradient direction, GAN/R1 signs, update ratio, shared backward-simulation step."""

from __future__ import annotations

import pytest
import torch

from pid.diffusion import dmd


def _grad(x0, teacher, fake):
    x0 = x0.clone().requires_grad_(True)
    dmd.vsd_loss(x0, teacher, fake).backward()
    return x0.grad


def test_vsd_gradient_vanishes_when_fake_and_teacher_agree():
    g = torch.Generator().manual_seed(0)
    x0, teacher = torch.randn(3, 3, 8, 8, generator=g), torch.randn(3, 3, 8, 8, generator=g)
    grad = _grad(x0, teacher, teacher.clone())
    assert torch.count_nonzero(grad) == 0


def test_vsd_gradient_points_from_fake_toward_teacher_with_the_float64_normaliser():
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 3, 8, 8, generator=g)
    teacher, fake = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    grad = _grad(x0, teacher, fake)
    step = -grad  # a gradient-descent step on the student sample
    toward_teacher = teacher - fake
    cos = torch.nn.functional.cosine_similarity(step.flatten(), toward_teacher.flatten(), dim=0)
    assert cos > 0.999
    # exact value: (fake - teacher) * w / N with w = 1 / mean|x0 - teacher| per sample, in float64
    w = 1.0 / ((x0.double() - teacher.double()).abs().mean(dim=(1, 2, 3), keepdim=True) + 1e-6)
    expected = (fake.double() - teacher.double()) * w / x0.numel()
    torch.testing.assert_close(grad.double(), expected, rtol=1e-5, atol=1e-9)
    # a descent step moves the student toward the teacher's prediction's side of the fake one
    x0_new = x0 + 1e3 * step
    assert ((x0_new - x0) * (teacher - fake)).sum() > 0


def test_vsd_loss_is_float64_and_finite_when_student_equals_teacher():
    x0 = torch.randn(2, 3, 4, 4, dtype=torch.bfloat16)
    loss = dmd.vsd_loss(x0.float().requires_grad_(), x0.float(), x0.float() + 1e-3)
    assert loss.dtype == torch.float64 and torch.isfinite(loss)


def test_fake_score_flow_loss_targets_eps_minus_detached_x0():
    x0, eps = torch.randn(2, 3, 4, 4).requires_grad_(), torch.randn(2, 3, 4, 4)
    v = (eps - x0).detach().requires_grad_()
    loss = dmd.fake_score_flow_loss(v, x0, eps)
    assert loss.item() == 0.0
    loss = dmd.fake_score_flow_loss(v + 1, x0, eps)
    loss.backward()
    assert x0.grad is None and v.grad is not None and (v.grad > 0).all()


def test_gan_signs():
    fake = torch.zeros(4, 1, requires_grad=True)
    real = torch.zeros(4, 1, requires_grad=True)
    dmd.gan_generator_loss(fake).backward()
    assert (fake.grad < 0).all(), "generator descent raises D(fake): student samples look more real"
    fake.grad = None
    dmd.gan_discriminator_loss(real, fake).backward()
    assert (real.grad < 0).all() and (fake.grad > 0).all(), "D descent raises D(real) and lowers D(fake)"
    # the generator loss is lower when D thinks the sample is real
    assert dmd.gan_generator_loss(torch.full((2, 1), 3.0)) < dmd.gan_generator_loss(torch.full((2, 1), -3.0))
    good = dmd.gan_discriminator_loss(torch.full((2, 1), 3.0), torch.full((2, 1), -3.0))
    bad = dmd.gan_discriminator_loss(torch.full((2, 1), -3.0), torch.full((2, 1), 3.0))
    assert good < bad


def test_r1_penalises_logit_change_under_real_perturbation():
    real = torch.tensor([[1.0], [2.0]], requires_grad=True)
    assert dmd.r1_approx_loss(real, real.detach().clone()).item() == 0.0
    perturbed = torch.tensor([[1.5], [1.0]])
    loss = dmd.r1_approx_loss(real, perturbed)
    assert loss > 0
    loss.backward()
    assert torch.all(torch.sign(-real.grad) == torch.sign(perturbed - real.detach())), "descent closes the gap"


def test_gan_weight_linear_warmup():
    assert dmd.gan_generator_weight(0, 0.05, 100) == 0.0
    assert dmd.gan_generator_weight(50, 0.05, 100) == pytest.approx(0.025)
    assert dmd.gan_generator_weight(100, 0.05, 100) == 0.05
    assert dmd.gan_generator_weight(7, 0.05, 0) == 0.05


def test_perturbation_t_is_clamped_logit_normal():
    t = dmd.sample_perturbation_t(20000, std=3.0, generator=torch.Generator().manual_seed(0))
    assert t.min() >= 0.02 and t.max() <= 0.99
    assert (t == 0.02).any() and (t == 0.99).any()
    shifted = dmd.sample_perturbation_t(20000, shift=6.0, generator=torch.Generator().manual_seed(0))
    assert shifted.mean() > t.clamp(0.02, 0.99).mean() - 0.5 and shifted.median() > 0.7


@pytest.mark.parametrize("every", [1, 2, 5, 6])
def test_update_schedule_gives_exactly_the_configured_ratio(every):
    windows = 7
    phases = [dmd.is_student_step(i, every) for i in range(windows * every)]
    assert sum(phases) == windows
    assert len(phases) - sum(phases) == windows * (every - 1)
    for w in range(windows):  # exactly one student update in every window, first (official: 0, 6, 12, ...)
        window = phases[w * every:(w + 1) * every]
        assert window == [True] + [False] * (every - 1)
    if every == 6:
        assert [i for i in range(13) if dmd.is_student_step(i, 6)] == [0, 6, 12]


def test_step_generator_is_shared_across_ranks_and_distinct_per_step():
    a = torch.randint(0, 4, (16,), generator=dmd.step_generator(3, 10))
    b = torch.randint(0, 4, (16,), generator=dmd.step_generator(3, 10))
    c = torch.randint(0, 4, (16,), generator=dmd.step_generator(3, 11))
    assert torch.equal(a, b) and not torch.equal(a, c)
    r0 = torch.randn(8, generator=dmd.step_generator(3, 10, rank=0))
    r1 = torch.randn(8, generator=dmd.step_generator(3, 10, rank=1))
    assert not torch.equal(r0, r1)


def test_discriminator_on_middle_block_features():
    from pid.nn.discriminator import FeatureDiscriminator

    disc = FeatureDiscriminator(in_channels=64, num_blocks=14)
    assert disc.feature_blocks == (7,)
    logits = disc({7: torch.randn(2, 64, 4, 6)})
    assert logits.shape == (2, 1)
    two = FeatureDiscriminator(in_channels=64, num_blocks=4, feature_blocks=[1, 3], patch_logits=True)
    assert two({1: torch.randn(2, 64, 4, 4), 3: torch.randn(2, 64, 4, 4)}).shape == (2, 8)
    with pytest.raises(ValueError):
        FeatureDiscriminator(in_channels=64, num_blocks=4, feature_blocks=[4])

