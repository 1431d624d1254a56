"""The end-of-run report of a shard build: counts kept / dropped per reason, the list of every
dropped or converted input with its reason, and PNG histograms of score, size and aspect ratio."""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path


def _hist_png(values, path: Path, title: str, xlabel: str, bins: int = 30) -> None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
        ax.hist(values, bins=bins, color="#4c72b0")
        ax.set_title(f"{title} (n={len(values)})")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("images")
        fig.tight_layout()
        tmp = path.with_name(path.name + ".tmp.png")
        fig.savefig(tmp, metadata={"Software": None})
        plt.close(fig)
        os.replace(tmp, path)
    except ImportError:  # a bare bar chart with PIL
        import numpy as np
        from PIL import Image, ImageDraw

        counts, edges = np.histogram(values or [0.0], bins=bins)
        img = Image.new("RGB", (500, 320), "white")
        d = ImageDraw.Draw(img)
        top = max(int(counts.max()), 1)
        for i, c in enumerate(counts):
            x0 = 20 + i * 460 // bins
            d.rectangle([x0, 290 - int(250 * c / top), x0 + 460 // bins - 2, 290], fill=(76, 114, 176))
        d.text((20, 5), f"{title} (n={len(values)}) [{edges[0]:.3g}, {edges[-1]:.3g}] {xlabel}", fill="black")
        img.save(path)


def write_report(out: Path, kept: list[dict], dropped: list[dict], shards: list[dict], extra: dict) -> dict:
    out = Path(out)
    reasons = Counter(d["reason"] for d in dropped)
    converted = [
        {"key": r["key"], "path": r["path"], "convert": r["convert"]} for r in kept if r.get("convert")
    ]
    score_names = sorted({k for r in kept for k, v in r.get("scores", {}).items() if v is not None})
    report = {
        "kept": len(kept),
        "dropped": len(dropped),
        "dropped_by_reason": dict(sorted(reasons.items())),
        "by_source": dict(sorted(Counter(r["source"].split(":")[0] for r in kept).items())),
        "by_bucket": dict(sorted(Counter(r.get("bucket", "?") for r in kept).items())),
        "converted": converted,
        "shards": len(shards),
        "bytes": sum(s["bytes"] for s in shards),
        "dropped_inputs": dropped,
        **extra,
    }
    tmp = out / "report.json.tmp"
    tmp.write_text(json.dumps(report, indent=1, sort_keys=True))
    os.replace(tmp, out / "report.json")
    _hist_png(
        [math.log2(r["width"] / r["height"]) for r in kept], out / "hist_aspect.png", "aspect", "log2(W/H)"
    )
    _hist_png([r["width"] * r["height"] / 1e6 for r in kept], out / "hist_size.png", "size", "megapixels")
    for name in score_names:
        _hist_png(
            [r["scores"].get(name) for r in kept], out / f"hist_score_{name}.png", f"score {name}", name
        )
    lines = [
        "# Shard build report\n",
        f"- kept: **{len(kept)}** in {len(shards)} shards ({report['bytes'] / 1e6:.1f} MB)",
        f"- dropped: **{len(dropped)}**",
        "",
        "| dropped reason | count |",
        "|---|---:|",
    ]
    lines += [f"| {k} | {v} |" for k, v in sorted(reasons.items())]
    lines += ["", "| bucket | images |", "|---|---:|"] + [
        f"| {k} | {v} |" for k, v in report["by_bucket"].items()
    ]
    lines += ["", "## Dropped inputs", ""] + [
        f"- `{d['path']}` ({d['stage']}): **{d['reason']}** {d['detail']}" for d in dropped
    ]
    lines += ["", "## Converted (kept, re-encoded as RGB PNG)", ""] + [
        f"- `{c['path']}`: {c['convert']}" for c in converted
    ]
    lines += [
        "",
        "Histograms: " + ", ".join(f"![{p.stem}]({p.name})" for p in sorted(out.glob("hist_*.png"))),
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return report
