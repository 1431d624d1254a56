"""The results folder of `make eval`: results.md + results.csv, PNG plots, an HTML slider page, W&B.

The metric columns of the tables come from the registry (pid/eval/registry.py), between the
method's own columns and its latency.

Layout (``out_dir``):
    results.md, results.csv, results.json   one row per method (skipped methods with their reason)
    quality_vs_latency.png                   a metric (report.latency_plot) against median latency
    quality_vs_sigma.png                     early-exit sweep: metrics (report.sigma_plot) against σ
    compare.html + crops/*.png               side-by-side crops with a before/after slider
"""

from __future__ import annotations

import csv
import html
import json
import math
from pathlib import Path

import numpy as np
import torch

from pid.eval.registry import Column

# The columns of every row besides the metrics': the method first, its latency and memory last.
METHOD_COLUMNS = (Column("label", "method", ""), Column("steps", "steps", "d"), Column("sigma", "σ", "g"))
LATENCY_COLUMNS = (Column("latency_ms", "latency ms (median)", ".1f"),
                   Column("latency_spread", "p10–p90 ms", ""), Column("peak_mem_mb", "peak MB", ".0f"))


def table_columns(metric_columns: list[Column]) -> list[Column]:
    """Every column of results.md/.csv and the W&B table, in order: method, metrics (registry), latency."""
    return [*METHOD_COLUMNS, *metric_columns, *LATENCY_COLUMNS]


def _fmt(value, column: Column, notes: dict) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        note = notes.get(column.key)
        return note.split(" (")[0] if note else "–"  # the short reason; the full one is under Notes
    if not column.fmt or isinstance(value, str):
        return str(value)
    return column.format(value)


def _group_table(rows: list[dict], columns: list[Column]) -> list[str]:
    """Markdown lines of the by-group table (``row["by_group"]``, see ``data.groups``); [] if none."""
    grouped = [r for r in rows if r.get("by_group")]
    if not grouped or not columns:
        return []
    groups = list(grouped[0]["by_group"])
    sizes = {g: grouped[0]["by_group"][g]["n"] for g in groups}
    head = ["method"] + [f"{g} (n={sizes[g]}) {c.title}" for g in groups for c in columns]
    md = ["", "Fidelity by group (`data.groups`):", "", "| " + " | ".join(head) + " |",
          "|" + "---|" * len(head)]
    for r in grouped:
        cells = [c.format(r["by_group"].get(g, {}).get(c.key, float("nan"))) for g in groups for c in columns]
        md.append("| " + " | ".join([r["label"], *cells]) + " |")
    return md


def write_tables(rows: list[dict], skipped: list[dict], metric_columns: list[Column], notes: dict,
                 out_dir: Path, header: str, group_columns: list[Column] = (),
                 column_notes: dict | None = None) -> tuple[Path, Path]:
    """results.md + results.csv + results.json. ``notes`` maps a metric's name to its note (listed under
    Notes); ``column_notes`` maps a column key to the text shown in a cell without a value."""
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = table_columns(metric_columns)
    cell_notes = column_notes or {}
    md = [header, "", "| " + " | ".join(c.title for c in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        md.append("| " + " | ".join(_fmt(r.get(c.key), c, cell_notes) for c in columns) + " |")
    for s in skipped:
        md.append(f"| {s['name']} | skipped: {s['reason']} |" + " |" * (len(columns) - 2))
    md += _group_table(rows, list(group_columns))
    if notes:
        md += ["", "Notes:"] + [f"- **{k}**: {v}" for k, v in notes.items()]
    md_path = out_dir / "results.md"
    md_path.write_text("\n".join(md) + "\n")
    keys = ["name", "family", *(c.key for c in columns), "latency_p10_ms", "latency_p90_ms", "mem_kind",
            "status"]
    csv_path = out_dir / "results.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({**r, "status": "ok"})
        for s in skipped:
            w.writerow({"name": s["name"], "family": s["family"], "label": s["name"],
                        "status": f"skipped: {s['reason']}"})
    (out_dir / "results.json").write_text(json.dumps({"rows": rows, "skipped": skipped, "notes": notes},
                                                     indent=2, default=float))
    return md_path, csv_path


def plot_quality_vs_latency(rows: list[dict], path: Path, metric: str = "patch_fid") -> Path | None:
    """``metric`` against median latency, one point per method (no early-exit rows); None without data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in rows if r["family"] != "early_exit" and r.get("latency_ms") is not None
           and not math.isnan(r.get(metric, float("nan")))]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    colors = {"cascade": "tab:blue", "pid": "tab:red"}
    for r in pts:
        ax.scatter(r["latency_ms"], r[metric], color=colors.get(r["family"], "gray"), s=40)
        lo, hi = r.get("latency_p10_ms", r["latency_ms"]), r.get("latency_p90_ms", r["latency_ms"])
        ax.plot([lo, hi], [r[metric]] * 2, color=colors.get(r["family"], "gray"), lw=1)
        ax.annotate(r["label"], (r["latency_ms"], r[metric]), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("latency per image, median ms (log; bar = p10–p90)")
    ax.set_ylabel(f"{metric} (lower is better)")
    ax.set_title("quality vs latency (red: PiD, blue: cascades)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_quality_vs_sigma(rows: list[dict], path: Path, columns: list[Column],
                          keys=("patch_fid", "psnr", "niqe")) -> Path | None:
    """The early-exit sweep: each of ``keys`` (registry columns) against σ, PiD and native + bicubic."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ee = [r for r in rows if r["family"] == "early_exit"]
    if not ee:
        return None
    known = {c.key: c for c in columns}
    metrics = [m for m in keys if m in known and any(not math.isnan(r.get(m, float("nan"))) for r in ee)]
    if not metrics:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for prefix, color, label in (("early_exit_pid", "tab:red", "PiD"), ("early_exit_native", "tab:blue",
                                                                            "native + bicubic")):
            series = sorted((r["sigma"], r[m]) for r in ee if r["name"].startswith(prefix))
            if series:
                ax.plot(*zip(*series), marker="o", color=color, label=label)
        ax.set_xlabel("latent noise σ (early exit)")
        ax.set_ylabel(known[m].title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("quality vs σ")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _save_png(img: torch.Tensor, path: Path) -> None:
    from PIL import Image

    from pid.utils.images import to_uint8

    Image.fromarray(to_uint8(img).permute(1, 2, 0).cpu().numpy()).save(path)


_SLIDER_CSS = """
body{font-family:sans-serif;margin:1em;background:#fafafa} .row{margin-bottom:2em}
.cmp{position:relative;display:inline-block;line-height:0;border:1px solid #ccc}
.cmp img{image-rendering:pixelated;width:var(--w);height:var(--h)}
.cmp .after{position:absolute;top:0;left:0;clip-path:inset(0 0 0 50%)}
.cmp input{position:absolute;left:0;bottom:-1.6em;width:100%}
.grid{display:flex;gap:8px;flex-wrap:wrap} .grid figure{margin:0} figcaption{font-size:12px}
.grid img{image-rendering:pixelated;width:var(--w)}
"""
_SLIDER_JS = """
function slide(el){const a=el.parentElement.querySelector('.after');
 a.style.clipPath='inset(0 0 0 '+el.value+'%)';}
function pick(sel,side){const row=sel.closest('.row');
 const img=row.querySelector(side==='b'?'.before':'.after');
 img.src=sel.value;}
"""


def write_html(images: dict[str, torch.Tensor], labels: dict[str, str], out_dir: Path, n: int = 4,
               before: str = "native_bicubic", after: str | None = None, zoom: int = 2) -> Path:
    """compare.html: per crop, a before/after slider (two selectable methods) and a grid of all methods.

    ``images``: method name → (B, 3, H, W) in [-1, 1] (including "ground_truth" when known).
    """
    crops = out_dir / "crops"
    crops.mkdir(parents=True, exist_ok=True)
    names = list(images)
    if after not in images:
        after = next((k for k in names if k.startswith(("pid_student", "pid_teacher"))), names[-1])
    before = before if before in images else names[0]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>PiD eval: side by side</title>"
             f"<style>{_SLIDER_CSS}</style><script>{_SLIDER_JS}</script></head><body>",
             "<h1>Side-by-side crops</h1><p>Drag the slider: left of it is <b>before</b>, right of it is "
             "<b>after</b>; pick either side from the menus. Below: every method on the same crop.</p>"]
    count = min(n, len(next(iter(images.values()))))
    for i in range(count):
        files = {}
        for k in names:
            f = crops / f"{i:03d}_{k.replace(':', '_').replace('@', '_at_')}.png"
            _save_png(images[k][i], f)
            files[k] = f"crops/{f.name}"
        h, w = images[names[0]].shape[-2:]
        style = f"--w:{w * zoom}px;--h:{h * zoom}px"

        def options(selected):
            return "".join(f"<option value='{files[k]}'{' selected' if k == selected else ''}>"
                           f"{html.escape(labels.get(k, k))}</option>" for k in names)

        parts.append(f"<div class='row' style='{style}'><h3>crop {i}</h3>"
                     f"before: <select onchange=\"pick(this,'b')\">{options(before)}</select> "
                     f"after: <select onchange=\"pick(this,'a')\">{options(after)}</select><br><br>"
                     f"<div class='cmp'><img class='before' src='{files[before]}'>"
                     f"<img class='after' src='{files[after]}'>"
                     f"<input type='range' min='0' max='100' value='50' oninput='slide(this)'></div><br><br>"
                     "<div class='grid'>" + "".join(
                         f"<figure><img src='{files[k]}'><figcaption>{html.escape(labels.get(k, k))}"
                         "</figcaption></figure>" for k in names) + "</div></div>")
    parts.append("</body></html>")
    path = out_dir / "compare.html"
    path.write_text("\n".join(parts))
    return path


def log_to_wandb(loggers, rows: list[dict], metric_columns: list[Column], images: dict[str, torch.Tensor],
                 labels: dict[str, str], plots: list[Path]) -> None:
    """The results table (the columns of results.csv), the plots and the first crops to every W&B logger."""
    from pid.utils.images import to_uint8

    for lg in loggers or []:
        if type(lg).__name__ != "WandbLogger":
            continue
        import wandb

        cols = ["name"] + [c.key for c in table_columns(metric_columns)]
        lg.log_table("eval/results", columns=cols,
                     data=[[r.get(c) if not isinstance(r.get(c), float) or not math.isnan(r.get(c))
                            else None for c in cols] for r in rows])
        lg.experiment.log({f"eval/{p.stem}": wandb.Image(str(p)) for p in plots if p})
        k = min(4, len(next(iter(images.values()))))
        lg.log_image("eval/crops", [np.concatenate([to_uint8(images[m][i]).permute(1, 2, 0).cpu().numpy()
                                                    for m in images], axis=1) for i in range(k)],
                     caption=[" | ".join(labels.get(m, m) for m in images)] * k)
