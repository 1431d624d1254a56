r"""Early exit: stop a latent diffusion model after K of N steps and let PiD decode the noisy state.

A flow-matching LDM's state after K steps is already :math:`x_K = (1-\sigma_K) z + \sigma_K \varepsilon`
with :math:`\sigma_K` the scheduler's own (shifted) noise level, exactly the latent noising PiD was
trained on, so PiD decodes ``x_K`` with ``sigma=σ_K`` (docs/method.md §5). Euler/VE-frame samplers (SDXL's
``EulerDiscreteScheduler``) hold :math:`z + \sigma_{ve}\varepsilon`; dividing the state and σ by
:math:`\sqrt{\sigma_{ve}^2+1}` gives the VP frame :math:`\sqrt{1-\sigma^2} z + \sigma\varepsilon` PiD's
SDXL decoder was trained on (:func:`to_training_frame`, exact).

Two ways to get the state:

* :func:`run_scheduler_loop` — any diffusers scheduler (or anything with ``set_timesteps``,
  ``timesteps``, ``sigmas``, ``step``) and a model function: runs K of N steps and returns
  :class:`ExitState` (state, σ_K, already in PiD's frame).
* :func:`run_pipeline_to_step` — a diffusers pipeline (FLUX.1/FLUX.2/SD3/SDXL/…): a
  ``callback_on_step_end`` (:class:`StepCapture`) records the latents after step K, interrupts the
  pipeline (``pipe._interrupt``: the remaining steps are skipped) and returns the state with the σ at
  the scheduler's own step index. Packed latents (FLUX.1's ``(B, N, 64)`` tokens) are unpacked with the
  pipeline's own ``_unpack_latents``; pass ``unpack=`` for other layouts (FLUX.2: unpack the token
  sequence to its (B, 128, h, w) grid).

Where the state sits on the schedule comes from the scheduler itself (:func:`schedule_index`: its
``step_index``, else ``begin_index`` + K), never from K alone: img2img / inpainting pipelines
(``strength`` < 1) and SDXL's ``denoising_start`` begin mid-schedule, so after K of their steps the latent
is at ``sigmas[start + K]``. FLUX.1 img2img with 10 steps and strength 0.6 starts at index 4: two steps
later the state is at σ = sigmas[6] = 0.4 (no shift), not sigmas[2] = 0.8, and the loop has 6 steps, not 10.

Best exits keep the last 3–5 LDM steps for PiD (FLUX.1 24/28, FLUX.2 45/50).

    state = run_pipeline_to_step(pipe, exit_after=24, num_inference_steps=28, prompt="…", height=512,
                                 width=512)
    image = decoder.decode(state.latent, state.sigma)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from pid.diffusion.noising import ve_to_vp

FRAMES = ("flow", "vp", "ve")


@dataclass
class ExitState:
    """An LDM state after ``step`` of the ``num_steps`` steps its loop runs, in PiD's training frame.

    ``start`` is the schedule index the loop began at (0 for text-to-image; ``N − int(N·strength)`` for
    img2img), so the state sits at ``scheduler.sigmas[start + step]`` for first-order schedulers.
    """

    latent: torch.Tensor  # normalised latent (B, C, h, w), noisy at level sigma
    sigma: float  # σ_K in PiD's frame (flow or VP σ)
    step: int  # K: the steps that ran
    num_steps: int  # the steps the loop runs in full (img2img: fewer than num_inference_steps)
    frame: str  # the frame the LDM ran in ("flow" or "ve"); latent/sigma are converted already
    raw_sigma: float  # the scheduler's σ_K before conversion
    start: int = 0  # schedule index of the loop's first step (img2img strength, denoising_start)


def scheduler_frame(scheduler) -> str:
    """The frame a scheduler's states live in: "flow" for flow matching (σ ∈ [0, 1]), "ve" for
    Euler/k-diffusion style schedulers (σ up to ≫ 1)."""
    if "FlowMatch" in type(scheduler).__name__:
        return "flow"
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and len(sigmas) and float(torch.as_tensor(sigmas).max()) > 1.0 + 1e-6:
        return "ve"
    return "flow"


def to_training_frame(latent: torch.Tensor, sigma: float, frame: str) -> tuple[torch.Tensor, float]:
    """(state, σ) in the LDM's frame → PiD's frame: identity for "flow"/"vp", exact VE→VP for "ve"."""
    if frame not in FRAMES:
        raise ValueError(f"frame must be one of {FRAMES}, got {frame!r}")
    if frame == "ve":
        latent, sigma = ve_to_vp(latent, float(sigma))
    return latent, float(sigma)


def schedule_start(scheduler) -> int:
    """Schedule index a denoising loop began at: the scheduler's ``begin_index`` (diffusers img2img and
    ``denoising_start`` pipelines call ``set_begin_index``), else 0."""
    begin = getattr(scheduler, "begin_index", None)
    return int(begin) if begin is not None else 0


def schedule_index(scheduler, steps_run: int) -> int:
    """Index into ``scheduler.sigmas`` of the state after ``steps_run`` steps of the current loop.

    The scheduler's own ``step_index`` once it has stepped (it counts from ``begin_index``, so the steps an
    img2img pipeline skips are included), else ``begin_index + steps_run`` (schedulers without a step index,
    or before the first step).
    """
    index = getattr(scheduler, "step_index", None) if steps_run > 0 else None
    return int(index) if index is not None else schedule_start(scheduler) + int(steps_run)


def _sigma_at(scheduler, index: int) -> float:
    """``scheduler.sigmas[index]``; ValueError when the index is past the schedule's end."""
    sigmas = scheduler.sigmas
    if not 0 <= index < len(sigmas):
        raise ValueError(
            f"{type(scheduler).__name__}: schedule index {index} is outside its {len(sigmas)} sigmas "
            "(set_timesteps not called, or more steps run than scheduled)"
        )
    return float(sigmas[index])


@torch.no_grad()
def run_scheduler_loop(
    scheduler,
    model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    latents: torch.Tensor,
    num_inference_steps: int,
    exit_after: int | None = None,
    frame: str = "auto",
    generator: torch.Generator | None = None,
    **set_timesteps_kwargs,
) -> ExitState:
    """Run ``exit_after`` (K) of ``num_inference_steps`` (N) scheduler steps and return the state.

    ``model_fn(model_input, t)`` returns what ``scheduler.step`` expects (velocity for flow matching,
    ε for Euler with ``prediction_type="epsilon"``); ``latents`` is the starting state at σ_0. ``frame``:
    "auto" (from the scheduler), "flow" or "ve".
    """
    scheduler.set_timesteps(num_inference_steps, **set_timesteps_kwargs)
    timesteps = scheduler.timesteps
    k = len(timesteps) if exit_after is None else int(exit_after)
    if not 0 <= k <= len(timesteps):
        raise ValueError(f"exit_after={k} must be in [0, {len(timesteps)}]")
    x = latents
    for t in timesteps[:k]:
        model_input = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
        out = model_fn(model_input, t)
        kwargs = {"generator": generator} if generator is not None else {}
        x = scheduler.step(out, t, x, return_dict=False, **kwargs)[0]
    frame = scheduler_frame(scheduler) if frame == "auto" else frame
    raw_sigma = _sigma_at(scheduler, schedule_index(scheduler, k))
    latent, sigma = to_training_frame(x, raw_sigma, frame)
    return ExitState(latent, sigma, k, len(timesteps), frame, raw_sigma, schedule_start(scheduler))


class StepCapture:
    """``callback_on_step_end`` for diffusers pipelines: record the latents after K steps (for each K in
    ``exit_steps``) with σ_K, and interrupt the pipeline after the last one when ``stop``.

    diffusers calls it with ``step_index = i`` after step i of its loop ran, so K = i + 1 steps are done;
    the latents sit at ``scheduler.sigmas[j]`` with j the scheduler's own step index (:func:`schedule_index`),
    which is ``start + K`` for pipelines that begin mid-schedule (img2img). ``num_steps`` is the length of
    the pipeline's loop (``pipe._num_timesteps`` when it records it, else the scheduled steps from
    ``begin_index`` on).
    """

    def __init__(self, exit_steps, frame: str = "auto", unpack: Callable | None = None, stop: bool = True):
        self.exit_steps = {int(k) for k in ([exit_steps] if isinstance(exit_steps, int) else exit_steps)}
        self.frame, self.unpack, self.stop = frame, unpack, stop
        self.states: dict[int, ExitState] = {}
        self.num_steps = 0

    def __call__(self, pipe, step_index: int, timestep, callback_kwargs: dict) -> dict:
        k = step_index + 1
        scheduler = pipe.scheduler
        start = schedule_start(scheduler)
        loop_steps = getattr(pipe, "_num_timesteps", None)
        self.num_steps = int(loop_steps) if loop_steps is not None else len(scheduler.timesteps) - start
        if k in self.exit_steps:
            latents = callback_kwargs["latents"]
            if self.unpack is not None:
                latents = self.unpack(latents)
            frame = scheduler_frame(scheduler) if self.frame == "auto" else self.frame
            raw_sigma = _sigma_at(scheduler, schedule_index(scheduler, k))
            latent, sigma = to_training_frame(latents.float(), raw_sigma, frame)
            self.states[k] = ExitState(latent.cpu(), sigma, k, self.num_steps, frame, raw_sigma, start)
            if self.stop and k >= max(self.exit_steps):
                pipe._interrupt = True  # diffusers pipelines skip the remaining steps
        return callback_kwargs


def default_unpack(pipe, height: int | None, width: int | None) -> Callable | None:
    """FLUX.1-style pipelines keep packed tokens (B, N, 64): unpack them with the pipeline's own
    ``_unpack_latents``."""
    if not hasattr(pipe, "_unpack_latents"):
        return None

    def unpack(latents: torch.Tensor) -> torch.Tensor:
        if latents.ndim != 3:
            return latents
        h = height or pipe.default_sample_size * pipe.vae_scale_factor
        w = width or pipe.default_sample_size * pipe.vae_scale_factor
        try:
            return pipe._unpack_latents(latents, h, w, pipe.vae_scale_factor)
        except TypeError as err:  # pipelines whose unpacking needs position ids (FLUX.2)
            raise TypeError(f"{type(pipe).__name__} latents need a custom unpack=…: {err}") from err

    return unpack


@torch.no_grad()
def run_pipeline_to_step(
    pipe,
    exit_after: int,
    num_inference_steps: int,
    frame: str = "auto",
    unpack: Callable | None = None,
    **pipe_kwargs,
) -> ExitState:
    """Run K = ``exit_after`` steps of a diffusers pipeline's denoising loop and return the state with its σ.

    ``num_inference_steps`` (N) is the pipeline's schedule length. Pipelines that start mid-schedule
    (img2img ``strength`` s: the last ``int(N·s)`` steps; ``denoising_start``) run only a tail of it:
    K counts the steps that really ran, σ is read at the scheduler's own step index and
    ``ExitState.num_steps`` / ``start`` say how long the loop is and where it began.
    ``pipe_kwargs`` go to the pipeline (prompt, image, strength, height, width, guidance_scale, generator,
    …); ``output_type="latent"`` is used so nothing is decoded.

    Raises:
        ValueError: ``exit_after`` outside [1, N].
        RuntimeError: the loop ran fewer than K steps (e.g. img2img with a low ``strength``); the message
            gives the loop's length.
    """
    if not 1 <= exit_after <= num_inference_steps:
        raise ValueError(f"exit_after={exit_after} must be in [1, {num_inference_steps}]")
    unpack = unpack or default_unpack(pipe, pipe_kwargs.get("height"), pipe_kwargs.get("width"))
    capture = StepCapture({exit_after}, frame=frame, unpack=unpack)
    pipe(
        num_inference_steps=num_inference_steps,
        callback_on_step_end=capture,
        callback_on_step_end_tensor_inputs=["latents"],
        output_type="latent",
        **pipe_kwargs,
    )
    if exit_after not in capture.states:
        raise RuntimeError(
            f"{type(pipe).__name__} ran {capture.num_steps} denoising steps, fewer than "
            f"exit_after={exit_after}"
            f" (of num_inference_steps={num_inference_steps}; img2img strength / denoising_start skip the "
            f"first ones): use exit_after <= {capture.num_steps}"
        )
    return capture.states[exit_after]


def decode_early_exit(decoder, state: ExitState, **decode_kwargs) -> torch.Tensor:
    """PiD-decode an :class:`ExitState` (already in PiD's frame) with σ = σ_K."""
    return decoder.decode(state.latent, state.sigma, **decode_kwargs)
