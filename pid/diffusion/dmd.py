r"""DMD2 distillation math as pure functions (PiD §4, docs/method.md §4): VSD, fake-score flow (DSM) loss,
GAN, R1, the regression term, perturbation times and the two time-scale update schedule.
:class:`pid.diffusion.dmd2_loss.DMD2Loss` composes them into the student's and the critics' losses.

Conventions as everywhere in :mod:`pid.diffusion`: ``x_t = (1 - t) x0 + t eps``, ``v = eps - x0``.

Variational score distillation (DMD / DMD2) in x₀ space. With the student sample :math:`x_0`, its
re-noised version :math:`x_t` and the x₀ predictions of the frozen teacher ("real score",
CFG baked in) and of the fake score (trained on student samples),

.. math::

    w = 1 / \operatorname{mean}|x_0 - \hat x_0^{\,teacher}|, \qquad
    g = (\hat x_0^{\,fake} - \hat x_0^{\,teacher})\, w, \qquad
    \mathcal L = \tfrac12 \lVert x_0 - \operatorname{sg}(x_0 - g) \rVert^2 ,

so :math:`\partial \mathcal L / \partial x_0 = g / N`: gradient descent moves the student sample
from where the fake score puts it toward where the teacher does; it vanishes where both agree.
``w`` and ``g`` are computed in float64 (small denominators).
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from torch import Tensor

from ._util import compute_dtype
from .flow import sample_logit_normal, shift_time

__all__ = [
    "vsd_weight",
    "vsd_gradient",
    "vsd_loss",
    "fake_score_flow_loss",
    "regression_loss",
    "gan_generator_loss",
    "gan_discriminator_loss",
    "r1_approx_loss",
    "gan_generator_weight",
    "sample_perturbation_t",
    "is_student_step",
    "step_generator",
]


# ---------------------------------------------------------------------------------------------
# Distribution matching
# ---------------------------------------------------------------------------------------------


def vsd_weight(x0_student: Tensor, x0_teacher: Tensor, eps: float = 1e-6) -> Tensor:
    """Per-sample normaliser :math:`w = 1 / (\\operatorname{mean}|x_0 - \\hat x_0^{teacher}| + \\epsilon)`,
    float64, shape (B, 1, ..., 1)."""
    dims = tuple(range(1, x0_student.ndim))
    diff = (x0_student.detach().double() - x0_teacher.detach().double()).abs().mean(dim=dims, keepdim=True)
    return 1.0 / (diff + eps)


@torch.no_grad()
def vsd_gradient(x0_student: Tensor, x0_teacher: Tensor, x0_fake: Tensor, eps: float = 1e-6) -> Tensor:
    """The DMD gradient :math:`g = (\\hat x_0^{fake} - \\hat x_0^{teacher})\\, w`, float64
    (non-finite → 0)."""
    g = (x0_fake.double() - x0_teacher.double()) * vsd_weight(x0_student, x0_teacher, eps)
    return torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)


def vsd_loss(x0_student: Tensor, x0_teacher: Tensor, x0_fake: Tensor, eps: float = 1e-6) -> Tensor:
    """:math:`\\tfrac12\\,\\operatorname{mean}(x_0 - \\operatorname{sg}(x_0 - g))^2` in float64.

    ``x0_student`` carries the gradient; teacher and fake predictions are treated as constants.
    The value is :math:`\\tfrac12 \\operatorname{mean}(g^2)` (a diagnostic, not a distance).
    """
    if not (x0_student.shape == x0_teacher.shape == x0_fake.shape):
        raise ValueError(f"shape mismatch: {tuple(x0_student.shape)}, {tuple(x0_teacher.shape)}, "
                         f"{tuple(x0_fake.shape)}")
    grad = vsd_gradient(x0_student, x0_teacher, x0_fake, eps)
    target = (x0_student.detach().double() - grad).detach()
    return 0.5 * F.mse_loss(x0_student.double(), target, reduction="mean")


def fake_score_flow_loss(v_pred: Tensor, x0: Tensor, eps: Tensor) -> Tensor:
    """Flow (denoising score matching) loss of the fake score on student samples ``x0`` (detached):
    :math:`\\operatorname{mean}\\lVert v - (\\varepsilon - \\operatorname{sg}(x_0)) \\rVert^2` in fp32."""
    dtype = compute_dtype(v_pred, x0, eps)
    target = eps.to(dtype) - x0.detach().to(dtype)
    return F.mse_loss(v_pred.to(dtype), target, reduction="mean")


def regression_loss(x0_student: Tensor, x0_target: Tensor) -> Tensor:
    """Per-step guidance distillation (Meng et al. 2023): :math:`\\operatorname{mean}(x_0 -
    \\operatorname{sg}(\\hat x_0^{\\,teacher}))^2` in fp32, with the guided teacher's x̂₀ taken at the
    student's own input (x_k, t_k). With the Euler sampler a student that zeroes it reproduces the guided
    teacher at the student's times. Not part of the paper's recipe (weight 0 there)."""
    return torch.mean((x0_student.float() - x0_target.detach().float()) ** 2)


# ---------------------------------------------------------------------------------------------
# Adversarial terms (non-saturating logistic GAN, approximate R1)
# ---------------------------------------------------------------------------------------------


def gan_generator_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating generator loss :math:`\\operatorname{mean}\\,\\mathrm{softplus}(-D(fake))`:
    decreases as the discriminator calls student samples real."""
    return F.softplus(-fake_logits.float()).mean()


def gan_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Discriminator loss :math:`\\mathrm{mean\\,softplus}(-D(real)) + \\mathrm{mean\\,softplus}(D(fake))`."""
    return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()


def r1_approx_loss(real_logits: Tensor, perturbed_real_logits: Tensor) -> Tensor:
    """Approximate R1 (APT / FastGen): :math:`\\operatorname{mean}(D(x) - D(x + \\alpha\\xi))^2`, a finite-
    difference penalty on the discriminator's sensitivity around real samples (0 when it is flat)."""
    return F.mse_loss(real_logits.float(), perturbed_real_logits.float(), reduction="mean")


def gan_generator_weight(step: int, weight: float = 0.05, warmup_steps: int = 100) -> float:
    """Generator GAN weight with a linear warm-up from 0 over ``warmup_steps`` iterations."""
    if warmup_steps > 0 and step < warmup_steps:
        return float(weight) * max(step, 0) / warmup_steps
    return float(weight)


# ---------------------------------------------------------------------------------------------
# Times, schedule and seeded randomness
# ---------------------------------------------------------------------------------------------


def sample_perturbation_t(
    n: int,
    mean: float = 0.0,
    std: float = 1.0,
    t_min: float = 0.02,
    t_max: float = 0.99,
    shift: float = 1.0,
    generator: torch.Generator | None = None,
    device=None,
) -> Tensor:
    """Times at which the student sample is re-noised for VSD / DSM / GAN: logit-normal(mean, std),
    time-shifted by ``shift`` (1 = none), clamped to ``[t_min, t_max]``; float32 (n,)."""
    if not 0.0 <= t_min < t_max <= 1.0:
        raise ValueError(f"need 0 <= t_min < t_max <= 1, got {(t_min, t_max)}")
    t = sample_logit_normal(n, mean=mean, std=std, generator=generator, device=device)
    if shift != 1.0:
        t = shift_time(t, shift)
    return t.clamp(t_min, t_max)


def is_student_step(iteration: int, student_every: int) -> bool:
    """Two time-scale rule of the official recipe (``student_update_freq``): iteration ``i`` (0-based)
    updates the student iff ``i % student_every == 0`` (0, 6, 12, ... for 6), else the critics (fake score
    and discriminator) — exactly 1 : (student_every − 1) in every window of ``student_every`` iterations."""
    if student_every < 1:
        raise ValueError(f"student_every must be >= 1, got {student_every}")
    return int(iteration) % int(student_every) == 0


def step_generator(seed: int, step: int, rank: int | None = None) -> torch.Generator:
    """A CPU generator that is a pure function of (seed, step[, rank]).

    ``rank=None`` gives the same stream on every process (choices that must agree across ranks, such
    as the backward-simulation step); a rank gives per-process noise. Resuming at a step reproduces it.
    """
    key = f"{int(seed)}/{int(step)}/{'shared' if rank is None else int(rank)}".encode()
    value = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & ((1 << 63) - 1)
    return torch.Generator(device="cpu").manual_seed(value)
