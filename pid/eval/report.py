"""The results folder of `make eval`: results.md + results.csv, PNG plots, an HTML slider page, W&B.

Layout (``out_dir``):
    results.md, results.csv, results.json   one row per method (skipped methods with their reason)
    quality_vs_latency.png                   patch-FID (and FID) against median latency
    quality_vs_sigma.png                     early-exit sweep: patch-FID / PSNR against σ
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

COLUMNS = [
    ("label", "method", None), ("steps", "steps", "d"), ("sigma", "σ", "g"),
    ("fid", "FID↓", ".2f"), ("kid", "KID×1e3↓", ".2f"), ("patch_fid", "patch-FID↓", ".2f"),
    ("patch_kid", "patch-KID×1e3↓", ".1f"),
    ("psnr", "PSNR↑", ".2f"), ("ssim", "SSIM↑", ".4f"), ("lpips", "LPIPS↓", ".4f"),
    ("niqe", "NIQE↓", ".2f"), ("brisque", "BRISQUE↓", ".2f"), ("qalign", "Q-Align↑", ".2f"), ("clip", "CLIP↑", ".2f"),
    ("latency_ms", "latency ms (median)", ".1f"), ("latency_spread", "p10–p90 ms", None),
    ("peak_mem_mb", "peak MB", ".0f"),
]


def _fmt(value, spec, notes: dict, key: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        note = notes.get(key)
        return note.split(" (")[0] if note else "–"  # the short reason; the full one is under Notes
    if spec is None:
        return str(value)
    return format(value, spec)


def _group_table(rows: list[dict]) -> list[str]:
    """Markdown lines of the fidelity-by-group table (``row["by_group"]``, see ``data.groups``); [] if none."""
    grouped = [r for r in rows if r.get("by_group")]
    if not grouped:
        return []
    groups = list(grouped[0]["by_group"])
    has_lpips = any("lpips" in g for r in grouped for g in r["by_group"].values())
    metrics = [("psnr", "PSNR↑", ".2f"), ("ssim", "SSIM↑", ".4f")] + ([("lpips", "LPIPS↓", ".4f")] if has_lpips else [])
    head = ["method"] + [f"{g} (n={grouped[0]['by_group'][g]['n']}) {label}" for g in groups for _, label, _ in metrics]
    md = ["", "Fidelity by group (`data.groups`):", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in grouped:
        cells = [format(r["by_group"].get(g, {}).get(k, float("nan")), spec) for g in groups for k, _, spec in metrics]
        md.append("| " + " | ".join([r["label"], *cells]) + " |")
    return md


def write_tables(rows: list[dict], skipped: list[dict], notes: dict, out_dir: Path, header: str) -> tuple[Path, Path]:
    """Markdown + CSV + JSON. ``notes`` maps a metric key to the text shown instead of a number
    (e.g. ``{"clip": "not configured"}``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = [header, "", "| " + " | ".join(c[1] for c in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        md.append("| " + " | ".join(_fmt(r.get(k), s, notes, k) for k, _, s in COLUMNS) + " |")
    for s in skipped:
        md.append(f"| {s['name']} | skipped: {s['reason']} |" + " |" * (len(COLUMNS) - 2))
    md += _group_table(rows)
    if notes:
        md += ["", "Notes:"] + [f"- **{k}**: {v}" for k, v in notes.items()]
    md_path = out_dir / "results.md"
    md_path.write_text("\n".join(md) + "\n")
    keys = ["name", "family"] + [k for k, _, _ in COLUMNS] + ["latency_p10_ms", "latency_p90_ms", "mem_kind",
                                                               "status"]
    csv_path = out_dir / "results.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({**r, "status": "ok"})
        for s in skipped:
            w.writerow({"name": s["name"], "family": s["family"], "label": s["name"], "status": f"skipped: {s['reason']}"})
    (out_dir / "results.json").write_text(json.dumps({"rows": rows, "skipped": skipped, "notes": notes},
                                                     indent=2, default=float))
    return md_path, csv_path


def plot_quality_vs_latency(rows: list[dict], path: Path, metric: str = "patch_fid") -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in rows if r["family"] != "early_exit" and r.get("latency_ms") is not None
           and not math.isnan(r.get(metric, float("nan")))]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    colors = {"cascade": "tab:blue", "pid": "tab:red"}
    for r in pts:
        ax.scatter(r["latency_ms"], r[metric], color=colors.get(r["family"], "gray"), s=40)
        lo, hi = r.get("latency_p10_ms", r["latency_ms"]), r.get("latency_p90_ms", r["latency_ms"])
        ax.plot([lo, hi], [r[metric]] * 2, color=colors.get(r["family"], "gray"), lw=1)
        ax.annotate(r["label"], (r["latency_ms"], r[metric]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("latency per image, median ms (log; bar = p10–p90)")
    ax.set_ylabel(f"{metric} (lower is better)")
    ax.set_title("quality vs latency (red: PiD, blue: cascades)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_quality_vs_sigma(rows: list[dict], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ee = [r for r in rows if r["family"] == "early_exit"]
    if not ee:
        return None
    metrics = [m for m in ("patch_fid", "psnr", "niqe") if any(not math.isnan(r.get(m, float("nan"))) for r in ee)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for prefix, color, label in (("early_exit_pid", "tab:red", "PiD"), ("early_exit_native", "tab:blue",
                                                                            "native + bicubic")):
            series = sorted((r["sigma"], r[m]) for r in ee if r["name"].startswith(prefix))
            if series:
                ax.plot(*zip(*series), marker="o", color=color, label=label)
        ax.set_xlabel("latent noise σ (early exit)")
        ax.set_ylabel(m + (" ↑" if m == "psnr" else " ↓"))
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
function slide(el){const a=el.parentElement.querySelector('.after');a.style.clipPath='inset(0 0 0 '+el.value+'%)';}
function pick(sel,side){const row=sel.closest('.row');const img=row.querySelector(side==='b'?'.before':'.after');
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
    after = after if after in images else next((k for k in names if k.startswith(("pid_student", "pid_teacher"))),
                                               names[-1])
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


def log_to_wandb(loggers, rows: list[dict], images: dict[str, torch.Tensor], labels: dict[str, str],
                 plots: list[Path]) -> None:
    """The results table, the plots and the first crops to every W&B logger (no-op without one)."""
    for lg in loggers or []:
        if type(lg).__name__ != "WandbLogger":
            continue
        import wandb

        cols = ["name"] + [k for k, _, _ in COLUMNS]
        lg.log_table("eval/results", columns=cols,
                     data=[[r.get(c) if not isinstance(r.get(c), float) or not math.isnan(r.get(c))
                            else None for c in cols] for r in rows])
        lg.experiment.log({f"eval/{p.stem}": wandb.Image(str(p)) for p in plots if p})
        k = min(4, len(next(iter(images.values()))))
        lg.log_image("eval/crops", [np.concatenate([((images[m][i].permute(1, 2, 0).cpu().numpy() + 1) * 127.5)
                                                    .clip(0, 255).astype(np.uint8) for m in images], axis=1)
                                    for i in range(k)], caption=[" | ".join(labels.get(m, m) for m in images)] * k)
