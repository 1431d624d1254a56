"""Evaluation entry point: `python -m pid.evaluate ckpt=PATH [overrides]` (or `make eval ckpt=PATH`).

Compares PiD (teacher at N steps, DMD2 student at 4, an early-exit sweep over σ) with "native decode +
upscaler" cascades (bicubic, Lanczos, the diffusion-SR model of `exp=quickstart_sr`, spandrel upscalers)
on one evaluation set, scores every method with the metrics of the registry (``metrics:`` in
conf/eval.yaml, pid/eval/registry.py), and writes results.md/.csv, plots and compare.html
(pid/eval/report.py).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from pid.utils.errors import MissingWeightsError, PiDConfigError

log = logging.getLogger("pid.evaluate")


def load_decoders(cfg: DictConfig, device) -> tuple:
    """(teacher, its path, student or None, SR-cascade decoder or None) from ``ckpt``, ``student_ckpt``,
    ``sr_cascade_ckpt``."""
    from pid.api import load_decoder
    from pid.eval.inputs import resolve_ckpt

    release, student_release = cfg.get("release"), cfg.get("student_release")
    teacher_path = resolve_ckpt(cfg.ckpt, "ckpt", compatible=_teacher_check(cfg, student_release))
    latent = None
    if release or student_release:  # NVIDIA's files: the latent space comes from the release preset
        from pid.weights.release import load_release

        latent = load_release(release or student_release).build_latent(cfg.get("latent_path"))
    teacher = load_decoder(teacher_path, device=device, release=release, latent=latent)
    student = sr_dec = None
    if cfg.methods.student.enabled and cfg.student_ckpt:
        ours = _paired_identity(teacher)
        student_path = resolve_ckpt(
            cfg.student_ckpt, "student_ckpt",
            compatible=lambda p: _student_misfit(ours, teacher_path, p, student_release))
        _check_student(ours, teacher_path, student_path, student_release)
        student = load_decoder(student_path, device=device, latent=teacher.latent, release=student_release)
    if cfg.methods.sr_cascade.enabled and cfg.sr_cascade_ckpt:
        sr_path = resolve_ckpt(cfg.sr_cascade_ckpt, "sr_cascade_ckpt",
                               compatible=lambda p: _sr_cascade_misfit(p, teacher.sr_scale))
        sr_dec = load_decoder(sr_path, device=device)
        rgb = sr_dec.latent.down_factor == 1 and sr_dec.latent.channels == 3
        if not rgb or sr_dec.sr_scale != teacher.sr_scale:
            raise PiDConfigError(f"sr_cascade_ckpt={cfg.sr_cascade_ckpt} is not an RGB-conditioned SR model "
                                 f"at sr_scale {teacher.sr_scale} (`make train exp=quickstart_sr`)")
    return teacher, teacher_path, student, sr_dec


def _teacher_check(cfg: DictConfig, student_release):
    """For a ``ckpt`` glob beside a ``student_ckpt`` that names one file: a check that takes the newest
    teacher of the student's latent, text encoder and sr_scale (None otherwise)."""
    import glob

    from pid.eval.inputs import resolve_ckpt
    from pid.identity import check_compatible, read_identity

    student = cfg.student_ckpt if cfg.methods.student.enabled else None
    if not student or glob.has_magic(str(student)) or not glob.has_magic(str(cfg.ckpt)):
        return None
    student_path = resolve_ckpt(student, "student_ckpt")
    theirs = read_identity(student_path, release=student_release)
    if theirs is None:
        return None

    def misfit(path):
        try:
            ours = read_identity(path, release=cfg.get("release"))
            if ours is not None:
                check_compatible(ours, theirs, ours_label=f"ckpt={path}",
                                 theirs_label=f"student_ckpt={student_path}",
                                 parts=("latent", "text", "sr_scale"),
                                 advice="Set ckpt= to the teacher the student was distilled from.")
        except PiDConfigError as err:
            return err
        return None

    return misfit


def _sr_cascade_misfit(path, sr_scale: int) -> Exception | None:
    """None when ``path`` is an RGB-conditioned SR model at ``sr_scale`` (or says nothing of itself)."""
    from pid.identity import read_identity

    try:
        ident = read_identity(path)
    except PiDConfigError as err:
        return err
    if ident is not None and (ident.latent.kind != "RGBLatent" or ident.sr_scale != sr_scale):
        return PiDConfigError(f"not an RGB-conditioned SR model at sr_scale {sr_scale} (latent "
                              f"{ident.latent.describe()}, sr_scale {ident.sr_scale})")
    return None


def _paired_identity(teacher):
    """The teacher's identity with the latent space the evaluation encodes with (what a student must fit)."""
    from dataclasses import replace

    from pid.identity import identity_of, latent_identity

    ours = teacher.identity or identity_of(teacher.net, teacher.latent, teacher.sr_scale)
    return replace(ours, latent=latent_identity(teacher.latent))


def _check_student(ours, teacher_path, student_path, student_release) -> None:
    """Refuse a student that decodes another model than the teacher ``ours`` (latent, text encoder,
    sr_scale; :func:`pid.identity.check_compatible`), naming both identities."""
    from pid.identity import check_compatible, read_identity

    for note in check_compatible(
            ours, read_identity(student_path, release=student_release), ours_label=f"ckpt={teacher_path}",
            theirs_label=f"student_ckpt={student_path}", parts=("latent", "text", "sr_scale"),
            advice="Evaluate a student distilled from this teacher (student_ckpt=<its DMD2 run's export>), "
                   "or set ckpt= to the teacher the student was distilled from."):
        log.info("%s", note)


def _student_misfit(ours, teacher_path, student_path, student_release) -> Exception | None:
    """None when the student file fits the teacher, else the error saying why (glob choice)."""
    try:
        _check_student(ours, teacher_path, student_path, student_release)
    except PiDConfigError as err:
        return err
    return None


def build_suite(cfg: DictConfig, truth, captions, device):
    """The metric suite of ``metrics:`` (one entry per metric; null entries are left out)."""
    from pid.eval.registry import EvalContext, MetricSuite

    crops = cfg.crops
    ctx = EvalContext(truth, captions, device, int(crops.size), int(crops.per_image), int(crops.seed))
    metrics = {name: instantiate(spec, _convert_="all") if spec is not None else None
               for name, spec in (cfg.metrics or {}).items()}
    return MetricSuite(metrics, ctx)


def evaluate(cfg: DictConfig) -> dict:
    from tqdm.auto import tqdm

    from pid.eval.baselines import build_methods, decode_all
    from pid.eval.inputs import group_masks, load_eval_set, pick_device
    from pid.eval.latency import time_method

    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    out_dir = Path(cfg.report.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    teacher, teacher_path, student, sr_dec = load_decoders(cfg, device)
    log.info("teacher: %s", teacher_path)

    data = load_eval_set(cfg, teacher)
    truth, z = data["truth"], data["z"]
    log.info("evaluation set: %d latents %s → outputs %s", len(z), tuple(z.shape[1:]),
             tuple(truth.shape[1:]) if truth is not None else "(no ground truth)")
    methods, skipped = build_methods(cfg, teacher, student, sr_dec, device)
    log.info("methods: %s | skipped: %s", ", ".join(m.name for m in methods),
             ", ".join(f"{s.name} ({s.reason})" for s in skipped) or "none")
    suite = build_suite(cfg, truth, data["captions"], device)
    log.info("metrics: %s", ", ".join(m.name for m in suite.metrics))
    groups = group_masks(data["keys"], OmegaConf.to_container(cfg.data.get("groups") or {}))

    xi = torch.randn(z.shape, generator=torch.Generator().manual_seed(cfg.seed + 1))
    images, labels, rows = {}, {}, []
    if truth is not None:
        images["ground_truth"], labels["ground_truth"] = truth, "ground truth"
        rows.append({"name": "ground_truth", "family": "reference",
                     "label": "ground truth (reference, not ranked)", "sigma": 0.0, **suite(truth)})
    for method in tqdm(methods, desc="methods", unit="method", file=sys.stderr):
        t0 = time.perf_counter()
        out = decode_all(method, z, data["sigma"], xi, teacher.latent.noise_form, int(cfg.data.batch_size),
                         device, int(cfg.seed))
        row = {"name": method.name, "family": method.family, "label": method.label, "steps": method.steps,
               "sigma": method.sigma, "decode_s_total": time.perf_counter() - t0, **suite(out)}
        if groups:
            row["by_group"] = suite.by_group(out, groups)
        if cfg.latency.enabled and method.family in cfg.latency.families:
            row.update(time_method(method.run, z, teacher, cfg.latency, device))
        rows.append(row)
        images[method.name], labels[method.name] = out, method.label
        log.info("%-24s %s", method.name, suite.log_line(row))
    verdicts = judge_rows(cfg, rows, images, truth, teacher, suite)
    return write_report(cfg, rows, skipped, suite, images, labels, teacher, teacher_path, device, out_dir,
                        verdicts, data["keys"])


def judge_rows(cfg: DictConfig, rows, images, truth, teacher, suite) -> tuple[list[str], list[dict]]:
    """The verdict lines of the report (:mod:`pid.eval.headlines`): PiD vs native decode + bicubic and each
    early-exit σ, on the measures of :mod:`pid.eval.panel`; also marks the report's columns that reward
    grain under Notes."""
    from pid.eval import headlines
    from pid.nn.pixel_dit import network_patch_size

    log.info("verdicts: PiD vs native decode + bicubic (and each early-exit σ), with the grain check")
    if truth is not None:
        headlines.grain_check_columns(suite, rows, images, seed=int(cfg.seed))
    measures = cfg.report.get("verdict_measures")
    return headlines.verdict_lines(rows, images, truth, teacher.sr_scale, network_patch_size(teacher),
                                   int(cfg.crops.size), list(measures) if measures else None, int(cfg.seed))


def write_report(cfg, rows, skipped, suite, images, labels, teacher, teacher_path, device,
                 out_dir: Path, verdicts: tuple[list[str], list[dict]] = ([], []), keys=()) -> dict:
    """results.md/.csv/.json, the plots, compare.html and W&B (when configured); prints the summary."""
    from pid.eval import report
    from pid.eval.headlines import speed_line
    from pid.eval.sample import count_line

    columns = suite.columns
    summary = [*verdicts[0], *speed_line(rows)]
    first = next(iter(images.values()))
    counted = count_line(list(keys), OmegaConf.to_container(cfg.data.get("groups") or {})) if keys else \
        f"{len(first)} images"
    header = (f"# PiD evaluation\n\nteacher `{teacher_path}`; student `{cfg.student_ckpt}`; SR cascade "
              f"`{cfg.sr_cascade_ckpt}`\n\n{counted}, output {tuple(first.shape[-2:])}, sr_scale "
              f"{teacher.sr_scale}, device {device}, crops: {cfg.crops.per_image} seeded {cfg.crops.size}² "
              f"per image (seed {cfg.crops.seed}); latency: median of {cfg.latency.runs} runs after "
              f"{cfg.latency.warmup} warm-up, batch {cfg.latency.batch_size}.\n\n"
              + "Verdicts (pid/eval/verdict.py: per family, paired 95 % bootstrap intervals, sample floors, "
              "measures that reward grain excluded):\n\n" + "\n".join(f"- {s}" for s in summary))
    skipped_d = [{"name": s.name, "family": s.family, "reason": s.reason} for s in skipped]
    md, csv_path = report.write_tables(rows, skipped_d, columns, suite.notes, out_dir, header,
                                       suite.group_columns, suite.column_notes())
    plots = [report.plot_quality_vs_latency(rows, out_dir / "quality_vs_latency.png",
                                            cfg.report.latency_plot),
             report.plot_quality_vs_sigma(rows, out_dir / "quality_vs_sigma.png", columns,
                                          list(cfg.report.sigma_plot))]
    shown = {k: v for k, v in images.items() if not k.startswith("early_exit")}
    html = report.write_html(shown, labels, out_dir, n=int(cfg.report.crops), before=cfg.report.before,
                             after=cfg.report.after)
    if cfg.get("logger"):
        from pid.utils.loggers import instantiate_loggers

        report.log_to_wandb(instantiate_loggers(cfg.logger), rows, columns, images, labels,
                            [p for p in plots if p])
    for s in summary:
        print(s, flush=True)
    print(f"results: {md} | {csv_path} | {html}", flush=True)
    verdict_json = out_dir / "verdicts.json"
    verdict_json.write_text(json.dumps(verdicts[1], indent=2, default=float))
    return {"rows": rows, "skipped": skipped_d, "notes": suite.notes, "summary": summary,
            "verdicts": verdicts[1], "out_dir": str(out_dir)}


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    try:
        evaluate(cfg)
    except (MissingWeightsError, PiDConfigError) as err:
        log.error("%s", err)
        sys.exit(2)
    except Exception as err:  # Hydra's instantiate wraps errors raised while building a metric
        if isinstance(err.__cause__, (MissingWeightsError, PiDConfigError)):
            log.error("%s", err.__cause__)
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
