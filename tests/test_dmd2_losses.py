"""DMD2 math on toy problems.

VSD gradient direction, GAN/R1 signs, update ratio, shared backward-simulation step.
"""

from __future__ import annotations

from pathlib import Path

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
    assert torch.all(torch.sign(-real.grad) == torch.sign(perturbed - real.detach())), \
        "descent closes the gap"


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



def _toy_networks(seed: int = 0):
    """Stand-ins for teacher, fake score and discriminator: fixed linear maps of (x_t, t)."""
    from pid.diffusion.dmd2_loss import DMD2Networks

    g = torch.Generator().manual_seed(seed)
    a, b, w = torch.randn(3, 3, generator=g), torch.randn(3, 3, generator=g), torch.randn(3, generator=g)

    def mix(m, x, t):
        return torch.einsum("oc,bchw->bohw", m, x) * (1 - t.view(-1, 1, 1, 1))

    return DMD2Networks(teacher_x0=lambda x, t: mix(a, x, t), fake_v=lambda x, t: mix(b, x, t),
                        features=lambda x, t: {0: x * t.view(-1, 1, 1, 1)},
                        discriminator=lambda f: torch.einsum("c,bchw->b", w, f[0])[:, None])


def _loss_from_config(**overrides):
    """DMD2Loss as conf/model/dmd2.yaml builds it (the module fills in weights, GAN settings and the pool)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    model = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "model" / "dmd2.yaml")
    weights = {**OmegaConf.to_container(model.loss_weights), **overrides.pop("weights", {})}
    gan = {**OmegaConf.to_container(model.gan), **overrides.pop("gan", {})}
    return instantiate(model.loss)(weights=weights, gan=gan, consistency_pool=overrides.pop("pool", 4))


def test_dmd2_loss_takes_its_values_from_the_config():
    from pid.diffusion.dmd2_loss import DMD2Loss

    loss = _loss_from_config()
    assert isinstance(loss, DMD2Loss)
    assert (loss.vsd, loss.dsm, loss.regression, loss.consistency) == (1.0, 1.0, 0.0, 0.0)
    assert (loss.gan_weight, loss.gan_warmup_steps, loss.r1_weight, loss.r1_alpha) == (0.05, 100, 200.0, 0.1)
    assert loss.gan_enabled and not _loss_from_config(gan={"gen_weight": 0.0}).gan_enabled
    with pytest.raises(KeyError):
        DMD2Loss(weights={"vsd": 1.0}, gan={}, consistency_pool=4)  # no value falls back to a Python default


def test_dmd2_loss_critic_phase_is_dsm_plus_gan_plus_weighted_r1():
    from pid.diffusion import flow

    nets, g = _toy_networks(), torch.Generator().manual_seed(3)
    x0, real, eps, xi = (torch.randn(2, 3, 8, 8, generator=g) for _ in range(4))
    t = torch.tensor([0.3, 0.8])
    loss_fn = _loss_from_config(weights={"dsm": 0.5})
    loss, logs = loss_fn.critic(nets, x0, t, eps, real=real, xi=xi)
    x_t, real_t = flow.interpolate(x0, eps, t), flow.interpolate(real, eps, t)
    dsm = dmd.fake_score_flow_loss(nets.fake_v(x_t, t), x0, eps)
    d = {k: nets.discriminator(nets.features(x, t)) for k, x in
         (("fake", x_t), ("real", real_t), ("alpha", real_t + 0.1 * xi))}
    r1 = dmd.r1_approx_loss(d["real"], d["alpha"])
    want = 0.5 * dsm + dmd.gan_discriminator_loss(d["real"], d["fake"]) + 200.0 * r1
    torch.testing.assert_close(loss, want)
    assert set(logs) == {"dsm", "gan_d", "r1", "d_real", "d_fake", "loss_critic"}
    with pytest.raises(ValueError, match="xi"):
        loss_fn.critic(nets, x0, t, eps, real=real)


def test_dmd2_loss_student_phase_composes_every_term_with_its_weight():
    from pid.diffusion import flow, losses

    nets, g = _toy_networks(1), torch.Generator().manual_seed(4)
    x0, real, eps, x_k = (torch.randn(2, 3, 8, 8, generator=g) for _ in range(4))
    t, t_k, sigma = torch.tensor([0.4, 0.6]), torch.tensor([0.866, 0.866]), torch.tensor([0.0, 0.5])
    loss_fn = _loss_from_config(weights={"vsd": 2.0, "regression": 3.0, "consistency": 5.0}, pool=4,
                                gan={"warmup_steps": 10})
    x0 = x0.requires_grad_(True)
    loss, logs = loss_fn.student(nets, x0, t, eps, real=real, sigma=sigma, student_input=(x_k, t_k),
                                 iteration=5)
    x_t = flow.interpolate(x0.detach(), eps, t)
    vsd = dmd.vsd_loss(x0, nets.teacher_x0(x_t, t), flow.x0_from_v(x_t, nets.fake_v(x_t, t), t))
    regression = dmd.regression_loss(x0, nets.teacher_x0(x_k, t_k))
    consistency = losses.latent_consistency_loss(x0, real, 4, sigma)
    gan_g = dmd.gan_generator_loss(nets.discriminator(nets.features(x_t, t)))
    want = 2.0 * vsd.float() + 3.0 * regression + 5.0 * consistency + 0.025 * gan_g  # GAN weight: half warm
    torch.testing.assert_close(loss, want)
    assert logs["gan_weight"].item() == pytest.approx(0.025)
    assert {"vsd", "regression", "consistency", "gan_g", "loss_student"} <= set(logs)
    loss.backward()
    assert x0.grad is not None and torch.isfinite(x0.grad).all()  # every term reaches the student's sample
    plain, logs = _loss_from_config().student(nets, x0.detach(), t, eps, real=real, sigma=sigma,
                                              student_input=(x_k, t_k), iteration=5)
    assert "regression" not in logs and "consistency" not in logs  # weight 0: the paper's recipe


def test_regression_loss_is_the_mean_square_to_the_detached_target():
    x0 = torch.zeros(2, 3, 4, 4, requires_grad=True)
    target = torch.full((2, 3, 4, 4), 2.0, requires_grad=True)
    loss = dmd.regression_loss(x0, target)
    assert loss.item() == 4.0
    loss.backward()
    assert target.grad is None and (x0.grad < 0).all()
