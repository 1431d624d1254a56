"""Held-out comparison after distillation: the few-step student vs the teacher at the same steps, at its
full step count and (optionally) with the student's own sampler, on clean latents (σ = 0), with the
verdict measures and the one verdict rule of :mod:`pid.eval.verdict` (per family, paired bootstrap
intervals, the sample floor, measures that reward grain excluded; the grain check runs on native
decode + bicubic of the same crops).

Reusable pieces: :func:`decode_heldout_with` decodes the validation crops with any set of named decoders
(``fn(z, generator) -> images``); :func:`compare_student_teacher` is the DMD2 report printed by `pid.train`
and written to ``distill_comparison.json``.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Callable

import torch

from pid.diffusion import schedules
from pid.eval.heldout import BASELINE, heldout_loader, judge_decodes, measures_table, write_comparison
from pid.utils.images import to_signed, upsample

log = logging.getLogger(__name__)

Decoder = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@torch.no_grad()
def decode_heldout_with(module, loader, decoders: dict[str, Decoder],
                        seed: int = 0) -> dict[str, torch.Tensor]:
    """{"truth", "baseline" (native decode + bicubic), *decoders}: float [-1, 1] CPU tensors for every crop
    of ``loader`` (cap it with :func:`pid.eval.heldout.heldout_loader`).

    Every decoder sees the same clean latents and a generator seeded identically per batch.
    """
    out: dict[str, list[torch.Tensor]] = {"truth": [], "baseline": [], **{k: [] for k in decoders}}
    was_training = module.training
    module.eval()
    try:
        for i, batch in enumerate(loader):
            hq = to_signed(batch["image"].to(module.device))
            _, z = module.encode_lq(hq)
            out["truth"].append(hq.cpu())
            out["baseline"].append(upsample(module.latent.decode(z).float(), module.sr_scale).cpu())
            for name, decode in decoders.items():
                gen = torch.Generator().manual_seed(seed * 100003 + i)
                out[name].append(decode(z, gen).float().cpu())
    finally:
        module.train(was_training)
    return {k: torch.cat(v) for k, v in out.items()}


def compare_student_teacher(module, datamodule, ema=None, out_dir: str | Path = ".",
                            student_steps: int | None = None, teacher_steps: int | None = None, seed: int = 0,
                            max_crops: int | None = None, extractor=None,
                            include_teacher_sde: bool = True) -> dict[str, float]:
    """Student (EMA weights, its sampler, ``student_steps`` = its t list) vs teacher (Euler, its own
    CFG/shift) at the same number of steps vs teacher at ``teacher_steps`` (default: the teacher run's
    sampling.num_steps).

    ``include_teacher_sde`` adds the teacher run with the student's sampler and times (the student before
    distillation, at CFG 1), which separates the gain of distillation from the gain of the sampler; it is
    named ``teacher_{k}step_{sampler}`` (``_sde`` for PiD's student)."""
    datamodule.setup("validate")
    k = int(student_steps or module.sampling["num_steps"])
    full = int(teacher_steps or module.teacher_full_steps())

    def student(z, gen):
        with ema.averaged(module) if ema is not None else contextlib.nullcontext():
            return module.decode(z, 0.0, num_steps=k, generator=gen)

    sampler = module.sampling["sampler"]

    # the student's sampler and times on the teacher: what distillation starts from
    def teacher_before(z, gen):
        from pid.sampling import decode_latent

        timesteps = schedules.student_timesteps(module.sampling["t_list"], k,
                                                one_step_t=module.sampling["one_step_t"])
        return decode_latent(module.teacher, z, 0.0, sr_scale=module.sr_scale,
                             latent_down=module.latent.down_factor, generator=gen, sampler=sampler,
                             num_steps=k, timesteps=timesteps)

    decoders = {
        f"student_{k}step": student,
        f"teacher_{k}step": lambda z, gen: module.decode_teacher(z, 0.0, num_steps=k, generator=gen),
        f"teacher_{full}step": lambda z, gen: module.decode_teacher(z, 0.0, num_steps=full, generator=gen),
    }
    if include_teacher_sde:
        decoders[f"teacher_{k}step_{sampler}"] = teacher_before
    from pid.eval.sample import count_line
    from pid.nn.pixel_dit import network_patch_size

    loader, keys = heldout_loader(datamodule, max_crops, seed)
    images = decode_heldout_with(module, loader, decoders, seed=seed)
    s, t_few, t_full = (f"student_{k}step", f"teacher_{k}step", f"teacher_{full}step")
    labels = {"baseline": BASELINE, s: f"student ({k} steps)", t_few: f"teacher ({k} steps)",
              t_full: f"teacher ({full} steps)"}
    pairs = [(s, t_few), (s, t_full)]
    if include_teacher_sde:
        before = f"teacher_{k}step_{sampler}"
        labels[before] = f"teacher, student's {k}-step {sampler} sampler"
        pairs.append((s, before))
    judgement, metrics = judge_decodes(images, module.sr_scale, network_patch_size(module), pairs, labels,
                                       extractor=extractor, seed=seed)
    for (a, b), verdict in zip(pairs, judgement.verdicts):
        for o in verdict.outcomes:
            metrics[f"heldout/student_ahead_{o.measure.key}_vs_{b}"] = float(o.winner == labels[a])
    size = tuple(images["truth"].shape[-2:])
    names = [labels[n] for n in (*decoders, "baseline")]
    summary = "\n".join([
        f"held-out {count_line(keys)}, {size[0]}x{size[1]} (sr {module.sr_scale}x), clean latents (σ = 0); "
        "verdicts per family, each measure's paired 95 % bootstrap interval (pid/eval/verdict.py):",
        *measures_table(judgement, names, width=max(len(n) for n in names) + 2), *judgement.lines()])
    write_comparison(out_dir, "distill_comparison.json", images["truth"], metrics, summary,
                     extra={"verdicts": judgement.as_dict()})
    return metrics
