"""The closing lines of `make eval`: every "X ahead" it prints comes from the one verdict rule
(:mod:`pid.eval.verdict`) on the measures of :mod:`pid.eval.panel`, per family.

- PiD (the DMD2 student when there is one, else the first teacher row) vs native decode + bicubic;
- each σ of the early-exit sweep: PiD at σ vs native decode + bicubic of the same noisy latents;
- the speed line (a ratio of medians measured side by side in this run);
- the grain check of the report's own columns: a registry metric whose value for "native decode + bicubic
  + grain" is better than for "native decode + bicubic" gets "excluded from verdicts: rewards grain at this
  size" under Notes (the verdicts never use the table's columns; the note says which of them to distrust).
"""

from __future__ import annotations

import logging
import math

import torch

from pid.eval.verdict import EXCLUDED, GRAIN_SIGMA, add_grain

log = logging.getLogger(__name__)

BASELINE_ROW = "native_bicubic"


def pid_row(rows: list[dict]) -> dict | None:
    """The PiD row the headline speaks for: the student, else the first PiD row; None without one."""
    pid_rows = [r for r in rows if r["family"] == "pid"]
    students = [r for r in pid_rows if r["name"].startswith("pid_student")]
    return (students or pid_rows or [None])[0]


def pairs_to_judge(rows: list[dict]) -> list[tuple[str, str]]:
    """(PiD row, native + bicubic row) names: the headline pair and one per early-exit σ."""
    names = {r["name"] for r in rows}
    pid = pid_row(rows)
    pairs = [(pid["name"], BASELINE_ROW)] if pid and BASELINE_ROW in names else []
    for r in rows:
        if r["name"].startswith("early_exit_pid@"):
            native = r["name"].replace("early_exit_pid@", "early_exit_native@")
            if native in names:
                pairs.append((r["name"], native))
    return pairs


def verdict_lines(rows: list[dict], images: dict[str, torch.Tensor], truth: torch.Tensor | None,
                  sr_scale: int, patch: int, kid_patch: int | None, measures: list[str] | None = None,
                  seed: int = 0, extractor=None) -> tuple[list[str], list[dict]]:
    """The verdict lines for :func:`pairs_to_judge` (each pair's grain check on its own native + bicubic
    row) and their JSON. A set without ground truth, or without a native + bicubic row, gets one line
    saying why there is no verdict."""
    from pid.eval.panel import Panel, combine_checks

    if truth is None:
        return ["no verdict: the evaluation set has no ground truth (data.kind=latents)"], []
    pairs = pairs_to_judge(rows)
    if not pairs:
        return [f"no verdict: it needs a PiD row and the {BASELINE_ROW} row "
                "(methods.native_bicubic=true)"], []
    label = {r["name"]: r["label"] for r in rows}
    panel = Panel(truth, sr_scale, patch, kid_patch=kid_patch, extractor=extractor, measures=measures)
    outputs = {label[n]: images[n] for pair in pairs for n in pair}
    checks = [panel.grain_exclusions(outputs, [(label[a], label[b])], label[b], seed) for a, b in pairs]
    lines, out = [], []
    for (a, b), check in zip(pairs, checks):
        excluded = combine_checks(check, checks)
        judgement = panel.judge(outputs, [(label[a], label[b])], label[b], seed, excluded)
        lines += [f"{label[a]} vs {label[b]}:"] + [ln.strip() for ln in judgement.verdicts[0].lines()
                                                   if not ln.strip().startswith("·")]
        out.append({"pair": [a, b], **judgement.as_dict()})
    return lines, out


def speed_line(rows: list[dict]) -> list[str]:
    """PiD vs the diffusion-SR cascade in median latency (both timed in this run), when both have one."""
    pid = pid_row(rows)
    sr = next((r for r in rows if r["name"].startswith("sr_cascade")), None)
    if not (pid and sr and pid.get("latency_ms") and sr.get("latency_ms")):
        return []
    return [f"speed: {pid['label']} {pid['latency_ms']:.1f} ms vs {sr['label']} {sr['latency_ms']:.1f} ms "
            f"(medians) → PiD is {sr['latency_ms'] / pid['latency_ms']:.2f}× "
            f"{'faster' if sr['latency_ms'] > pid['latency_ms'] else 'slower (ratio < 1)'}"]


def grain_check_columns(suite, rows: list[dict], images: dict[str, torch.Tensor], seed: int = 0) -> dict:
    """Score "native decode + bicubic + grain" with the report's metric suite; for each column with a
    direction whose value it improves over the native + bicubic row, add the exclusion to the suite's notes.
    Returns {column key: (native + bicubic, + grain)} of the columns that reward grain."""
    base = next((r for r in rows if r["name"] == BASELINE_ROW), None)
    if base is None or BASELINE_ROW not in images:
        return {}
    grained = suite(add_grain(images[BASELINE_ROW], seed=seed))
    flagged = {}
    for metric in suite.active:
        for col in metric.columns:
            b, g = base.get(col.key), grained.get(col.key)
            if col.better is None or not all(isinstance(v, float) and math.isfinite(v) for v in (b, g)):
                continue
            if (g > b) if col.better == "higher" else (g < b):
                flagged[col.key] = (b, g)
                note = (f"{col.header}: {EXCLUDED} (native + bicubic {col.format(b)}, with Gaussian grain "
                        f"σ = {GRAIN_SIGMA:g} {col.format(g)})")
                old = suite.notes.get(metric.name)
                suite.notes[metric.name] = f"{old}; {note}" if old else note
    if flagged:
        log.info("report columns that reward grain: %s", ", ".join(flagged))
    return flagged
