r"""The DMD2 objective as one object: the student's and the critics' losses of an iteration, and weights.

PiD §4 (docs/method.md §4, Eq. 9); DMD2 (Yin et al. 2024). No Lightning and no networks here: the
training module hands in the student's sample, the re-noising time and noise, and the networks as
callables (:class:`DMD2Networks`); this object composes the terms of :mod:`pid.diffusion.dmd` and
:func:`pid.diffusion.losses.latent_consistency_loss`:

    student   x_t = (1 − t) x̂₀ + t ε
              L = w_vsd·VSD(x̂₀; teacher(x_t), fake(x_t)) + w_gan(i)·softplus(−D(x_t))
                  [+ w_reg·‖x̂₀ − teacher(x_k, t_k)‖²]  [+ w_cons·consistency(x̂₀, x)]
    critics   L = w_dsm·‖fake_v(x_t) − (ε − x̂₀)‖² + softplus(−D(real_t)) + softplus(D(x_t)) + w_r1·R1
              (real_t = the real image x noised at the same t and ε; R1 = ‖D(real_t) − D(real_t + αξ)‖²)

The weights come from the config (conf/model/dmd2.yaml: ``loss_weights``, ``gan``, ``consistency_pool``).
"""

from __future__ import annotations

from typing import Callable, Mapping, NamedTuple

import torch
from torch import Tensor

from . import dmd, flow
from .losses import latent_consistency_loss

__all__ = ["DMD2Loss", "DMD2Networks"]


class DMD2Networks(NamedTuple):
    """The networks the objective queries, bound to the iteration's condition (latent, σ, text).

    teacher_x0(x_t, t)  the frozen teacher's x̂₀, its CFG baked in (called without grad)
    fake_v(x_t, t)      the fake score's velocity
    features(x_t, t)    the frozen teacher's patch features for the discriminator; ``x_t`` may stack
                        k batches along dim 0 (``t`` stacked alike), the condition is repeated k times
    discriminator(f)    logits of the discriminator head on those features
    """

    teacher_x0: Callable[[Tensor, Tensor], Tensor]
    fake_v: Callable[[Tensor, Tensor], Tensor]
    features: Callable[[Tensor, Tensor], dict]
    discriminator: Callable[[dict], Tensor]


class DMD2Loss:
    """DMD2's losses with their weights.

    Args:
        weights: {vsd, dsm, regression, consistency}. ``regression`` (0 in the paper's recipe) holds the
            student's x̂₀ to the guided teacher's at the student's own input (per-step guidance
            distillation, :func:`pid.diffusion.dmd.regression_loss`); ``consistency`` (0 in the paper's
            recipe) weighs :func:`pid.diffusion.losses.latent_consistency_loss` pooled over
            ``consistency_pool`` pixels.
        gan: {gen_weight, warmup_steps, r1_weight, r1_alpha}: the generator's GAN weight, warmed up
            linearly over ``warmup_steps`` iterations (0 turns the GAN and the discriminator off), and the
            approximate R1 penalty's weight and perturbation scale.
        consistency_pool: pixels per pooled cell of the consistency term (the module passes one latent
            cell when the config leaves it null).
    """

    def __init__(self, weights: Mapping[str, float], gan: Mapping[str, float], consistency_pool: int):
        self.vsd = float(weights["vsd"])
        self.dsm = float(weights["dsm"])
        self.regression = float(weights["regression"])
        self.consistency = float(weights["consistency"])
        self.consistency_pool = int(consistency_pool)
        self.gan_weight = float(gan["gen_weight"])
        self.gan_warmup_steps = int(gan["warmup_steps"])
        self.r1_weight = float(gan["r1_weight"])
        self.r1_alpha = float(gan["r1_alpha"])

    @property
    def gan_enabled(self) -> bool:
        """Whether the GAN terms (and so the discriminator's update) are on."""
        return self.gan_weight > 0

    def generator_weight(self, iteration: int) -> float:
        """The student's GAN weight at ``iteration`` (linear warm-up)."""
        return dmd.gan_generator_weight(iteration, self.gan_weight, self.gan_warmup_steps)

    def student(self, nets: DMD2Networks, x0: Tensor, t: Tensor, eps: Tensor, *, real: Tensor, sigma: Tensor,
                student_input: tuple[Tensor, Tensor], iteration: int) -> tuple[Tensor, dict[str, Tensor]]:
        """The student's loss and its terms (detached, for logging).

        ``x0``: the student's sample (carries its graph); ``t``, ``eps``: re-noising time and noise;
        ``real``: the real image; ``sigma``: the condition's latent noise level (weighs the consistency
        term); ``student_input``: (x_k, t_k), the input of the student's graded forward (regression term).
        """
        x_t = flow.interpolate(x0, eps, t)  # carries the student's graph (GAN path)
        x_t_const = x_t.detach()
        with torch.no_grad():
            x0_teacher = nets.teacher_x0(x_t_const, t)
            x0_fake = flow.x0_from_v(x_t_const, nets.fake_v(x_t_const, t), t)
        vsd = dmd.vsd_loss(x0, x0_teacher, x0_fake)
        loss = self.vsd * vsd.float()
        logs = {"vsd": vsd.detach()}
        if self.regression:
            with torch.no_grad():
                target = nets.teacher_x0(*student_input)
            regression = dmd.regression_loss(x0, target)
            loss = loss + self.regression * regression
            logs["regression"] = regression.detach()
        if self.consistency:
            consistency = latent_consistency_loss(x0, real, self.consistency_pool, sigma)
            loss = loss + self.consistency * consistency.float()
            logs["consistency"] = consistency.detach()
        if self.gan_enabled:
            logits = nets.discriminator(nets.features(x_t, t))
            gan_g = dmd.gan_generator_loss(logits)
            weight = self.generator_weight(iteration)
            loss = loss + weight * gan_g
            logs.update(gan_g=gan_g.detach(), gan_weight=torch.tensor(weight),
                        d_fake_student=logits.detach().mean())
        logs["loss_student"] = loss.detach()
        return loss, logs

    def critic(self, nets: DMD2Networks, x0: Tensor, t: Tensor, eps: Tensor, *, real: Tensor,
               xi: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """The critics' loss (fake score's DSM, and with the GAN on the discriminator's loss and R1).

        ``x0``: the student's sample (no graph); ``t``, ``eps``: re-noising time and noise, shared by the
        student sample and the real image ``real``; ``xi``: R1's perturbation noise, shaped like ``real``
        (needed when :attr:`gan_enabled`).
        """
        x_t = flow.interpolate(x0, eps, t)
        dsm = dmd.fake_score_flow_loss(nets.fake_v(x_t, t), x0, eps)
        loss = self.dsm * dsm
        logs = {"dsm": dsm.detach()}
        if self.gan_enabled:
            if xi is None:
                raise ValueError("the GAN's R1 term needs its perturbation noise xi")
            real_t = flow.interpolate(real, eps, t)  # real and student samples at the same t and noise
            real_alpha = real_t + self.r1_alpha * xi
            with torch.no_grad():
                feats = nets.features(torch.cat([x_t, real_t, real_alpha]), torch.cat([t] * 3))
            logits = nets.discriminator(feats).float()
            fake_logits, real_logits, alpha_logits = logits.chunk(3)
            gan_d = dmd.gan_discriminator_loss(real_logits, fake_logits)
            r1 = dmd.r1_approx_loss(real_logits, alpha_logits)
            loss = loss + gan_d + self.r1_weight * r1
            logs.update(gan_d=gan_d.detach(), r1=r1.detach(), d_real=real_logits.detach().mean(),
                        d_fake=fake_logits.detach().mean())
        logs["loss_critic"] = loss.detach()
        return loss, logs

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(vsd={self.vsd}, dsm={self.dsm}, regression={self.regression}, "
                f"consistency={self.consistency}, consistency_pool={self.consistency_pool}, "
                f"gan_weight={self.gan_weight}, gan_warmup_steps={self.gan_warmup_steps}, "
                f"r1_weight={self.r1_weight}, r1_alpha={self.r1_alpha})")
