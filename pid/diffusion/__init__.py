"""Diffusion math for PiD: rectified flow (t = 1 is noise), latent noising, schedules,
samplers, dual classifier-free guidance and losses.

Convention: ``x_t = (1 - t) x0 + t eps``, ``v = eps - x0``; a model is ``model(x_t, t) -> v``
with ``t`` of shape (B,).
"""

from .flow import (
    eps_from_v,
    eps_from_x0,
    interpolate,
    resolution_shift,
    sample_logit_normal,
    sample_training_t,
    shift_time,
    unshift_time,
    v_from_eps,
    v_from_x0,
    velocity,
    x0_from_eps,
    x0_from_v,
)
from .guidance import DualCFG, dual_cfg, guidance_branches
from .losses import aux_rgb_loss, flow_matching_loss, rgb_to_ycbcr, ycbcr_charbonnier
from .noising import NOISE_FORMS, keep_mask, noise_latent, sample_latent_sigma, ve_to_vp, vp_to_ve
from .samplers import SAMPLERS, get_sampler, sample_euler, sample_heun, sample_sde
from .schedules import STUDENT_T_LIST, student_timesteps, teacher_timesteps

__all__ = [
    # flow
    "interpolate",
    "velocity",
    "x0_from_v",
    "eps_from_v",
    "v_from_x0",
    "v_from_eps",
    "x0_from_eps",
    "eps_from_x0",
    "resolution_shift",
    "shift_time",
    "unshift_time",
    "sample_logit_normal",
    "sample_training_t",
    # noising
    "NOISE_FORMS",
    "noise_latent",
    "sample_latent_sigma",
    "keep_mask",
    "ve_to_vp",
    "vp_to_ve",
    # schedules
    "STUDENT_T_LIST",
    "teacher_timesteps",
    "student_timesteps",
    # samplers and guidance
    "sample_euler",
    "sample_heun",
    "sample_sde",
    "SAMPLERS",
    "get_sampler",
    "DualCFG",
    "dual_cfg",
    "guidance_branches",
    # losses
    "flow_matching_loss",
    "rgb_to_ycbcr",
    "ycbcr_charbonnier",
    "aux_rgb_loss",
]
