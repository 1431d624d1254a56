"""DMD2 distillation of a PiD teacher into a few-step (4-step) student, as a LightningModule (PiD §4,
docs/method.md §4).

Networks (all the same PiDNet architecture but the discriminator head):
    net          the student, initialised from the teacher; what EMA, export and `pid.api` see
    fake_score   initialised from the teacher, trained with the flow loss on (detached) student samples
    teacher      frozen EMA teacher, gives the real score (its CFG baked in) and the discriminator's features
    discriminator  conv head(s) on the teacher's patch features of a middle block

The objective (VSD, DSM, GAN with R1, the regression and latent-consistency terms, their weights) is
:class:`pid.diffusion.dmd2_loss.DMD2Loss`, chosen by ``model.loss``; this module draws the iteration's
samples and noise, runs the two-time-scale schedule and steps the optimisers. One iteration i (manual
optimisation, one backward per iteration so DDP sees one graph):
    critic   (i % student_every != 0): x̂₀ = student(...) without grad, re-noised at t ~ logit-normal;
             the fake score's DSM, the discriminator's loss and R1 (`DMD2Loss.critic`)
    student  (i % student_every == 0): x̂₀ = student(...) with grad; VSD, the warmed-up GAN term and the
             optional regression / consistency terms (`DMD2Loss.student`)
Student inputs: ``teacher_forcing`` (real HQ noised to a t of the student list, per sample) or
``backward_simulation`` (the student's own no-grad rollout from noise up to step k; k drawn from a
generator seeded by (seed, iteration) only, so every rank runs the same number of forwards).
The rollout and the exported decode use one multistep sampler, ``sampling.sampler``:
    sde    x_{i+1} = (1 − t_{i+1}) x̂₀ + t_{i+1} ε',  ε' fresh noise (DMD2's, PiD's student)
    euler  x_{i+1} = (1 − t_{i+1}) x̂₀ + t_{i+1} ε̂,   ε̂ = x_i + (1 − t_i) v̂ predicted
           (= x_i + (t_{i+1} − t_i) v̂)
All randomness of an iteration comes from generators seeded by (seed, iteration[, rank]): resuming
from a checkpoint reproduces the run exactly.

Lightning's ``global_step`` counts one step per iteration: the student and fake-score optimisers step
through Lightning, the discriminator's (stepped together with the fake score's) directly.
"""

from __future__ import annotations

import copy
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import lightning.pytorch as pl
import torch
from torch import nn

from pid.diffusion import dmd, flow, noising, schedules
from pid.diffusion.dmd2_loss import DMD2Loss, DMD2Networks
from pid.diffusion.guidance import DualCFG
from pid.lit.lr_schedule import LRFactor
from pid.utils.containers import plain_container
from pid.lit.strategies import clip_grad_norm, finish_fsdp_backward
from pid.utils.errors import PiDConfigError
from pid.utils.images import downsample, to_signed
from pid.weights.paths import resolve_weights_path

log = logging.getLogger(__name__)
# Checkpoints after the optimiser steps of an iteration are what we want (global_step counts iterations).
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")

STUDENT_INPUTS = ("teacher_forcing", "backward_simulation")
STUDENT_SAMPLERS = ("sde", "euler")
_TEACHER_FILES = "a pid_decoder.safetensors export or a .ckpt written by `pid.train`"


def resolve_teacher_path(value: str | os.PathLike | None, config_key: str = "model.teacher_ckpt",
                         compatible=None) -> Path:
    """A file, a run folder of ``pid.train`` or a glob (the newest match ``compatible`` accepts, e.g. the
    latest quickstart run trained on this run's latent): :func:`pid.weights.paths.resolve_weights_path`."""
    return resolve_weights_path(value, config_key, "PiD teacher", _TEACHER_FILES,
                                source="a teacher run: `make train exp=quickstart` writes "
                                       "logs/quickstart/runs/<time>/pid_decoder.safetensors",
                                compatible=compatible)


class DMD2Module(pl.LightningModule):
    """DMD2 distillation.

    Args:
        net: the teacher's PiDNet architecture (becomes the student; copies become teacher and fake score).
        latent: the frozen latent space (the teacher's embedded latent is loaded from its file when present).
        teacher_ckpt: teacher export/checkpoint, or a glob (newest match).
        discriminator: partial of `pid.nn.discriminator.FeatureDiscriminator` (sizes filled in here).
        loss: partial of the objective, `pid.diffusion.dmd2_loss.DMD2Loss` (its weights filled in here from
            ``loss_weights``, ``gan`` and ``consistency_pool``).
        student_optimizer, fake_score_optimizer, discriminator_optimizer: partials of torch optimisers.
        text_encoder: the frozen text conditioner (None: no captions).
        warmup_steps: {student, fake_score, discriminator}: linear LR warm-up, in updates of that network.
        grad_clip: {student, fake_score, discriminator}: max grad norm (null: no clipping, norm still logged).
        student_every: one student update every this many iterations (others update the critics): 6 → 1:5.
        student_input: "teacher_forcing" or "backward_simulation".
        student_t_list: the student's times (0 appended; PiD §4: [0.999, 0.866, 0.634, 0.342]).
        teacher_cfg: {text, latent} guidance of the real score (DualCFG; text only applies with captions).
        loss_weights: {vsd, dsm, regression, consistency}, see `DMD2Loss`.
        consistency_pool: pixels per pooled cell of the consistency term (null: one latent cell, sr_scale ×
            the latent's down factor).
        gan: {gen_weight, warmup_steps, r1_weight, r1_alpha}, see `DMD2Loss`; gen_weight 0 turns the GAN
            (and D) off.
        perturb_t: {logit_mean, logit_std, min, max, shift}: re-noising times (shift: resolution shift on).
        latent_noise: {sigma_max, prob}: latent noising of the condition (kept on; no latent dropout).
        time: {shift_base, shift_ref_size, shift_rule}: the time shift when the teacher file has no run config
            (official files); a teacher run of this project brings its own.
        sampling: student decode defaults {num_steps, sampler, t_list, one_step_t, text_cfg, latent_cfg} (in
            the export).
        teacher_sampling: the teacher's decode settings when its file has none (official files).
        caption_dropout: probability of replacing a caption by the empty caption (official: 0.1).
        seed: base seed of the per-iteration generators.

    Every value comes from conf/model/dmd2.yaml; nothing here repeats one.
    """

    def __init__(
        self,
        net: nn.Module,
        latent: nn.Module,
        teacher_ckpt: str,
        discriminator: Callable[..., nn.Module],
        loss: Callable[..., DMD2Loss],
        student_optimizer: Callable[..., torch.optim.Optimizer],
        fake_score_optimizer: Callable[..., torch.optim.Optimizer],
        discriminator_optimizer: Callable[..., torch.optim.Optimizer],
        *,
        text_encoder: nn.Module | None,
        sr_scale: int,
        warmup_steps: dict,
        grad_clip: dict,
        student_every: int,
        student_input: str,
        student_t_list: Sequence[float],
        teacher_cfg: dict,
        loss_weights: dict,
        consistency_pool: int | None,
        gan: dict,
        perturb_t: dict,
        latent_noise: dict,
        time: dict,
        sampling: dict,
        teacher_sampling: dict,
        caption_dropout: float,
        seed: int,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["net", "latent", "text_encoder", "discriminator", "loss",
                                          "student_optimizer", "fake_score_optimizer",
                                          "discriminator_optimizer"])
        self.automatic_optimization = False
        if student_input not in STUDENT_INPUTS:
            raise PiDConfigError(f"model.student_input={student_input!r}; expected one of {STUDENT_INPUTS}")
        if int(student_every) < 1:
            raise PiDConfigError(f"model.student_every must be >= 1, got {student_every}")
        self.sr_scale = int(sr_scale)
        self.student_every = int(student_every)
        self.student_input = student_input
        self.t_list = [float(t) for t in student_t_list]
        schedules.student_timesteps(self.t_list)  # validates the list
        self.teacher_cfg = dict(teacher_cfg)
        self.perturb_t = dict(perturb_t)
        self.latent_noise = dict(latent_noise)
        self.caption_dropout = float(caption_dropout)
        self._time_override = dict(time)
        self.sampling = dict(sampling)
        self.teacher_sampling = dict(teacher_sampling)
        if self.sampling.get("sampler") not in STUDENT_SAMPLERS:
            raise PiDConfigError(f"model.sampling.sampler={self.sampling.get('sampler')!r}; a student "
                                 f"samples with one of {STUDENT_SAMPLERS}")
        self.warmup_steps = dict(warmup_steps)
        self.grad_clip = dict(grad_clip)
        self.seed = int(seed)
        self.loss = loss(weights=loss_weights, gan=gan,
                         consistency_pool=consistency_pool or self.sr_scale * int(latent.down_factor))
        self.optimizer_factories = {"student": student_optimizer, "fake_score": fake_score_optimizer,
                                    "discriminator": discriminator_optimizer}
        self.strict_loading = False
        self.run_config: dict | None = None
        self._last_logs: dict[str, float] = {}
        self._build_networks(net, latent, text_encoder, teacher_ckpt, discriminator)

    # ------------------------------------------------------------------ setup
    def _build_networks(self, net: nn.Module, latent: nn.Module, text_encoder: nn.Module | None,
                        teacher_ckpt: str, discriminator: Callable[..., nn.Module]) -> None:
        """The frozen latent and text encoder; student, fake score and frozen teacher loaded from the
        teacher's file; the discriminator sized for the teacher's features."""
        adapter = getattr(net, "adapter", None)
        if adapter is not None and adapter.aux_rgb_head is not None:
            adapter.aux_rgb_head = None  # no aux RGB loss in distillation: student, teacher, critic drop it
        self.latent = latent.requires_grad_(False).eval()
        self.text_encoder = text_encoder.requires_grad_(False).eval() if text_encoder is not None else None
        from pid.identity import identity_of

        ours = identity_of(net, self.latent, self.sr_scale, self.text_encoder)
        self.teacher_path = resolve_teacher_path(teacher_ckpt,
                                                 compatible=lambda p: self._teacher_misfit(p, ours))
        log.info("teacher: %s", self.teacher_path)  # a glob's choice is logged by the resolver
        self.teacher_config = self._load_teacher(net, self.teacher_path, ours)
        teacher_model = (self.teacher_config or {}).get("model") or {}
        # Time shift of the re-noising times: the teacher's own training setting unless `time` overrides it.
        self.time = {**self._time_override, **(teacher_model.get("time") or {})}
        self.net = net  # the student (pid.lit.ema, pid.api.export_decoder and the image grids use `net`)
        self.fake_score = copy.deepcopy(net)
        self.teacher = copy.deepcopy(net).requires_grad_(False).eval()
        self.discriminator = discriminator(in_channels=net.hidden_size, num_blocks=net.patch_depth)

    def _load_teacher(self, net: nn.Module, path: Path, ours) -> dict:
        """Load the teacher's (EMA) weights into ``net`` strictly, and its embedded latent; return its run
        config.

        Any file :mod:`pid.weights` reads: our exports and checkpoints, or an official teacher release /
        full ``model.pth`` / DCP folder (its aux RGB head is skipped: distillation builds the student, teacher
        and fake score without it, as the official recipe does)."""
        from pid.identity import latent_identity, read_identity
        from pid.weights import load_weights, read_weights

        wf = read_weights(path)
        theirs = read_identity(wf)
        for note in self._check_teacher(path, theirs, ours):
            log.info("teacher identity: %s", note)
        load_weights(net, wf, weights="ema", allow=("unused-aux-head",), config_key="model.teacher_ckpt")
        latent_state = wf.groups.get("latent")
        if latent_state and getattr(self.latent, "store_in_checkpoint", False):
            self.latent.load_state_dict(latent_state, strict=True)  # the latent the teacher was trained on
            if ours.latent.digest != latent_identity(self.latent).digest:
                log.info("the teacher's embedded latent %s replaces this run's %s: the student learns the "
                         "latent its teacher decodes", latent_identity(self.latent).describe(),
                         ours.latent.describe())
        return wf.config or {}

    def _check_teacher(self, path: Path, theirs, ours) -> list[str]:
        """Refuse a teacher that decodes another model than this run's (latent, text encoder, sr_scale,
        output parameterisation; :func:`pid.identity.check_compatible`); the message names both identities
        and the overrides that distil this teacher correctly. A latent whose tensors travel in the teacher's
        file is compared by class and geometry only: the run takes the teacher's tensors. Returns notes."""
        from pid.identity import check_compatible, run_overrides_for

        adopt = bool(theirs is not None and theirs.latent.carried
                     and getattr(self.latent, "store_in_checkpoint", False))

        def advice(differ: list[str]) -> str:
            overrides = run_overrides_for(theirs.config or {}, differ) if theirs.config else []
            own = (f"run with the settings it was trained with: `{' '.join(overrides)}`" if overrides
                   else "run with the latent, text encoder, sr_scale and model.net it was trained with "
                        f"(its latent config: {(theirs.config or {}).get('latent')}; a conf/latent file "
                        "holding it is chosen with latent=<its name>)")
            return (f"To distil this teacher, {own}. To keep this run's settings, set model.teacher_ckpt to "
                    "a teacher trained with them.")

        return check_compatible(ours, theirs, ours_label="this run",
                                theirs_label=f"model.teacher_ckpt={path}", latent_tensors=not adopt,
                                advice=advice)

    def _teacher_misfit(self, path: Path, ours) -> Exception | None:
        """None when the teacher file at ``path`` fits this run, else the error saying why (glob choice)."""
        from pid.identity import read_identity

        try:
            self._check_teacher(path, read_identity(path), ours)
        except PiDConfigError as err:
            return err
        return None

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        self.latent.eval()
        if self.text_encoder is not None:
            self.text_encoder.eval()
        return self

    def on_fit_start(self) -> None:
        if str(self.trainer.precision) == "16-mixed":
            # The discriminator's optimiser steps outside Lightning (one global step per iteration), which
            # would bypass fp16's gradient scaler.
            raise PiDConfigError("trainer.precision=16-mixed is not supported for DMD2: "
                                 "use bf16-mixed or 32-true")

    @property
    def gan_enabled(self) -> bool:
        return self.loss.gan_enabled

    # ------------------------------------------------------------------ conditioning
    @torch.no_grad()
    def encode_lq(self, hq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lq = downsample(hq, self.sr_scale)
        return lq, self.latent.encode(lq).float()

    def encode_text(self, captions, keep=None):
        """Caption states; a dropped caption (keep 0) is the empty caption, as in the official recipe."""
        if self.text_encoder is None or captions is None:
            return None, None
        captions = list(captions)
        if keep is not None:
            captions = [c if k else "" for c, k in zip(captions, keep.bool().tolist())]
        with torch.no_grad():
            return self.text_encoder(captions)

    def null_text(self) -> torch.Tensor | None:
        """The text-CFG null caption's states (the encoder's ``null_caption``), None without an encoder."""
        return None if self.text_encoder is None else self.text_encoder.null_states()

    def condition(self, hq: torch.Tensor, captions, gen: torch.Generator) -> dict[str, Any]:
        """Noised latent (σ ~ U(0, σ_max) with prob p) and text with caption dropout (no latent dropout)."""
        _, z = self.encode_lq(hq)
        b = hq.shape[0]
        sigma = noising.sample_latent_sigma(b, self.latent_noise["sigma_max"], self.latent_noise["prob"],
                                            generator=gen, device=hq.device)
        form = getattr(self.latent, "noise_form", "flow")
        z = noising.noise_latent(z, sigma, _randn(z.shape, gen, z), form=form)
        keep = None
        if captions is not None and self.caption_dropout > 0:
            keep = torch.rand(b, generator=gen) >= self.caption_dropout
        y, y_mask = self.encode_text(captions, keep)
        return {"latent": z, "sigma": sigma, "y": y, "y_mask": y_mask}

    # ------------------------------------------------------------------ the three scores
    def _t_shift(self, h: int, w: int) -> float:
        if not self.perturb_t["shift"]:
            return 1.0
        return flow.resolution_shift(h, w, base=self.time["shift_base"], ref_size=self.time["shift_ref_size"])

    def teacher_x0(self, x_t: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        """Real score as an x₀ prediction, teacher CFG (text × latent, DualCFG) baked in; no grad."""
        from pid.sampling import pid_denoiser

        text_scale = self.teacher_cfg["text"] if cond.get("y") is not None else 1.0
        null = self.null_text() if cond.get("y") is not None else None
        model = DualCFG(pid_denoiser(self.teacher), text_scale=text_scale,
                        latent_scale=self.teacher_cfg["latent"], cond={**cond, "y_null": null})
        with torch.no_grad():
            return flow.x0_from_v(x_t, model(x_t, t), t)

    def teacher_features(self, x_t: torch.Tensor, t: torch.Tensor, cond: dict) -> dict:
        """Frozen-teacher patch features of the discriminator's blocks (differentiable w.r.t. x_t).

        ``x_t`` and ``t`` may stack k batches of the condition's size (the condition is repeated k times)."""
        repeat = x_t.shape[0] // cond["latent"].shape[0]
        cond = {k: (torch.cat([v] * repeat) if isinstance(v, torch.Tensor) else v) for k, v in cond.items()}
        _, extras = self.teacher(x_t, t, return_extras=True, feature_blocks=self.discriminator.feature_blocks,
                                 features_only=True, **cond)
        return extras["features"]

    def networks(self, cond: dict) -> DMD2Networks:
        """Teacher, fake score and discriminator bound to ``cond``, as the objective queries them."""
        return DMD2Networks(teacher_x0=lambda x, t: self.teacher_x0(x, t, cond),
                            fake_v=lambda x, t: self.fake_score(x, t, **cond),
                            features=lambda x, t: self.teacher_features(x, t, cond),
                            discriminator=self.discriminator)

    def student_x0(self, hq: torch.Tensor, cond: dict, gen: torch.Generator, shared: torch.Generator,
                   with_grad: bool, with_input: bool = False) -> tuple[torch.Tensor, ...]:
        """A student sample x̂₀ and the time its graded forward ran at, per student_input (and that forward's
        input x_t when ``with_input``)."""
        b = hq.shape[0]
        t_list = torch.tensor(self.t_list, device=hq.device)
        k_steps = len(self.t_list)
        noise = _randn(hq.shape, gen, hq)
        if self.student_input == "teacher_forcing":
            ids = torch.randint(0, k_steps, (b,), generator=gen).to(hq.device)
            t = t_list[ids]
            x = flow.interpolate(hq, noise, t)
        else:  # backward simulation: no-grad rollout up to step k (same k on every rank), decode's sampler
            k = int(torch.randint(0, k_steps, (1,), generator=shared))
            x = noise
            with torch.no_grad():
                for i in range(k):
                    t_i, t_next = t_list[i].expand(b), t_list[i + 1].expand(b)
                    v = self.net(x, t_i, **cond)
                    eps = (flow.eps_from_v(x, v, t_i) if self.sampling["sampler"] == "euler"
                           else _randn(hq.shape, gen, hq))
                    x = flow.interpolate(flow.x0_from_v(x, v, t_i), eps, t_next)
            t = t_list[k].expand(b).contiguous()
        x = x.detach()
        with torch.set_grad_enabled(with_grad and torch.is_grad_enabled()):
            x0 = flow.x0_from_v(x, self.net(x, t, **cond), t)
        return (x0, t, x) if with_input else (x0, t)

    # ------------------------------------------------------------------ losses of one iteration
    def _perturb(self, x0: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, h, w = x0.shape
        p = self.perturb_t
        t = dmd.sample_perturbation_t(b, p["logit_mean"], p["logit_std"], p["min"], p["max"],
                                      self._t_shift(h, w), generator=gen).to(x0.device)
        return t, _randn(x0.shape, gen, x0)

    def student_losses(self, hq, cond, gen, shared, iteration: int) -> tuple[torch.Tensor, dict]:
        """The student phase: a student sample with grad, re-noised, scored by `DMD2Loss.student`."""
        x0_s, t_s, x_s = self.student_x0(hq, cond, gen, shared, with_grad=True, with_input=True)
        t, eps = self._perturb(x0_s, gen)
        loss, logs = self.loss.student(self.networks(cond), x0_s, t, eps, real=hq, sigma=cond["sigma"],
                                       student_input=(x_s, t_s), iteration=iteration)
        logs["student_t"] = t_s.float().mean()
        return loss, logs

    def critic_losses(self, hq, cond, gen, shared) -> tuple[torch.Tensor, dict]:
        """The critic phase: a student sample without grad, re-noised, scored by `DMD2Loss.critic`."""
        with torch.no_grad():
            x0_s, _ = self.student_x0(hq, cond, gen, shared, with_grad=False)
        t, eps = self._perturb(x0_s, gen)
        xi = _randn(hq.shape, gen, hq) if self.gan_enabled else None  # R1's perturbation of the real sample
        return self.loss.critic(self.networks(cond), x0_s, t, eps, real=hq, xi=xi)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict, batch_idx: int) -> None:
        from pid.parallel.context import of_trainer

        iteration = int(self.global_step)
        cp = of_trainer(getattr(self, "_trainer", None))
        if cp is not None:  # one sample per CP group: its first rank's batch and random state
            batch = cp.broadcast_batch(batch)
            cp.sync_rng(self.device)
        hq = to_signed(batch["image"])
        # per-sample noise differs between data-parallel groups, not between the ranks of a CP group
        gen = dmd.step_generator(self.seed, iteration, rank=self.global_rank if cp is None else cp.dp_rank)
        shared = dmd.step_generator(self.seed, iteration)
        cond = self.condition(hq, batch.get("caption"), gen)
        if cp is not None:
            cond["context"] = cp  # every network call of the iteration splits over the group
        opt_s, opt_f, opt_d = self.optimizers()
        sched_s, sched_f, sched_d = self.lr_schedulers()
        for opt in (opt_s, opt_f, opt_d):
            opt.zero_grad(set_to_none=True)

        student_phase = dmd.is_student_step(iteration, self.student_every)
        if student_phase:
            loss, logs = self.student_losses(hq, cond, gen, shared, iteration)
        else:
            loss, logs = self.critic_losses(hq, cond, gen, shared)
        self.manual_backward(loss)
        finish_fsdp_backward(self.trainer)

        if student_phase:
            logs["grad_norm/student"] = self._clip(self.net, "student")
            opt_s.step()
            sched_s.step()
        else:
            logs["grad_norm/fake_score"] = self._clip(self.fake_score, "fake_score")
            opt_f.step()  # counts the iteration in trainer.global_step
            sched_f.step()
            if self.gan_enabled:
                logs["grad_norm/discriminator"] = self._clip(self.discriminator, "discriminator")
                (opt_d.optimizer if hasattr(opt_d, "optimizer") else opt_d).step()
                sched_d.step()
        for opt in (opt_s, opt_f, opt_d):
            opt.zero_grad(set_to_none=True)  # no stale grads (D's from the generator pass) in checkpoints

        self._last_logs.update({k: float(v) for k, v in logs.items()})
        self._last_logs["student_updates"] = float(iteration // self.student_every + 1)
        # The latest value of every term (each phase updates its own), so any logging step shows both phases.
        for k, v in self._last_logs.items():
            self.log(f"train/{k}", v, prog_bar=k in ("vsd", "dsm"), on_step=True, on_epoch=False,
                     batch_size=hq.shape[0])

    def _clip(self, module: nn.Module, name: str) -> float:
        """Clip ``module``'s gradients to ``grad_clip[name]``; their norm before clipping, all shards."""
        params = [p for p in module.parameters() if p.grad is not None]
        return clip_grad_norm(self.trainer, name, params, self.grad_clip.get(name), self.device)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def decode(self, latent: torch.Tensor, sigma: float | torch.Tensor = 0.0, *, num_steps: int | None = None,
               text_cfg: float | None = None, latent_cfg: float | None = None, captions=None,
               generator: torch.Generator | None = None, sampler: str | None = None) -> torch.Tensor:
        """Student decode: its sampler on the student times (``num_steps`` < 4 subsamples them)."""
        from pid.sampling import decode_latent

        steps = num_steps or self.sampling["num_steps"]
        timesteps = schedules.student_timesteps(self.sampling["t_list"], steps,
                                                one_step_t=self.sampling["one_step_t"])
        return decode_latent(
            self.net, latent, sigma, sr_scale=self.sr_scale, latent_down=self.latent.down_factor,
            num_steps=len(timesteps) - 1,
            text_cfg=self.sampling["text_cfg"] if text_cfg is None else text_cfg,
            latent_cfg=self.sampling["latent_cfg"] if latent_cfg is None else latent_cfg,
            text=self.encode_text(captions) if captions is not None else (None, None),
            generator=generator, sampler=sampler or self.sampling["sampler"], timesteps=timesteps)

    def _teacher_sampling(self) -> dict:
        """The teacher's decode settings: its own run's (files of this project), else teacher_sampling."""
        own = ((self.teacher_config or {}).get("model") or {}).get("sampling") or {}
        return {**self.teacher_sampling, **own}

    @torch.no_grad()
    def decode_teacher(self, latent: torch.Tensor, sigma: float | torch.Tensor = 0.0, *,
                       num_steps: int | None = None, generator: torch.Generator | None = None,
                       captions=None) -> torch.Tensor:
        """Teacher decode with the teacher's sampling settings (sampler, shifted grid, CFG)."""
        from pid.sampling import decode_latent

        sampling = self._teacher_sampling()
        return decode_latent(
            self.teacher, latent, sigma, sr_scale=self.sr_scale, latent_down=self.latent.down_factor,
            num_steps=num_steps or int(sampling["num_steps"]), sampler=sampling.get("sampler", "euler"),
            text_cfg=sampling["text_cfg"], latent_cfg=sampling["latent_cfg"],
            text=self.encode_text(captions) if captions is not None else (None, None),
            null_text=self.null_text() if captions is not None else None,
            shift_base=self.time["shift_base"], shift_ref_size=self.time["shift_ref_size"],
            shift_rule=self.time.get("shift_rule", "area"), generator=generator)

    def teacher_full_steps(self) -> int:
        return int(self._teacher_sampling()["num_steps"])

    @staticmethod
    def heldout_comparison():
        """Hook used by `pid.train`: the held-out comparison of a distillation run, 4-step student vs
        teacher at 4 steps vs teacher at full steps (``compare_options`` are its keyword arguments)."""
        from pid.lit.distill_compare import compare_student_teacher

        return compare_student_teacher

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        out = []
        for name, module in (("student", self.net), ("fake_score", self.fake_score),
                             ("discriminator", self.discriminator)):
            params = [p for p in module.parameters() if p.requires_grad]
            if not params:
                raise PiDConfigError(f"{name} has no trainable parameters")
            optimizer = self.optimizer_factories[name](params)
            warmup = max(int(self.warmup_steps.get(name) or 0), 0)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, LRFactor(warmup))
            out.append({"optimizer": optimizer,
                        "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": f"lr/{name}"}})
        return out

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep_latent = bool(getattr(self.latent, "store_in_checkpoint", False))
        drop = ("text_encoder.",) + (() if keep_latent else ("latent.",))
        for key in [k for k in checkpoint["state_dict"] if k.startswith(drop)]:
            del checkpoint["state_dict"][key]
        checkpoint["pid"] = {"format": 1, "config": self.run_config, "sr_scale": self.sr_scale,
                             "distill": {"teacher": str(self.teacher_path),
                                         "student_every": self.student_every}}
        from pid.identity import identity_of_module

        checkpoint["pid"]["identity"] = identity_of_module(self).to_dict()
        for key in ("hyper_parameters", "datamodule_hyper_parameters"):
            if key in checkpoint:
                checkpoint[key] = plain_container(checkpoint[key])


def _randn(shape, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float32).to(device=like.device)
