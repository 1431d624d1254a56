"""score: add quality scores to records (``W/scored.jsonl``); filtering by threshold is separate.

Reads ``W/ingest.jsonl`` and ``W/pdf.jsonl`` (or ``--inputs``), merges scores already in
``W/scored.jsonl`` (a re-run only scores what is missing for the chosen scorers), stores
``record["scores"][name]``. Images are decoded reduced (JPEG draft, then a bicubic thumbnail)
to at most ``--max-side`` px, so scores are comparable across native sizes.
"""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image

from data_prep.progress import bar, summary
from data_prep.records import dropped, read_jsonl, write_dropped, write_jsonl
from data_prep.scorers import make_scorer
from pid.data.io import open_image, to_rgb8, upright


def load_for_scoring(path: str, max_side: int) -> Image.Image:
    """The image as the one decoder gives it (``pid.data.io``), reduced to at most ``max_side`` px."""
    with open_image(path) as im:
        if im.format == "JPEG":
            im.draft("RGB", (max_side, max_side))
        im = to_rgb8(upright(im))
        im.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
        return im.copy()


def score(
    work,
    scorers=("niqe",),
    inputs=None,
    max_side: int = 1024,
    batch_size: int = 8,
    verbose: bool = True,
    **scorer_kw,
) -> dict:
    work = Path(work)
    inputs = [Path(p) for p in inputs] if inputs else [work / "ingest.jsonl", work / "pdf.jsonl"]
    records = [r for p in inputs for r in read_jsonl(p)]
    previous = {r["key"]: r.get("scores", {}) for r in read_jsonl(work / "scored.jsonl")}
    for r in records:
        r["scores"] = {**previous.get(r["key"], {}), **r.get("scores", {})}
    drops = []
    for name in scorers:
        fn = make_scorer(name, batch_size=batch_size, **scorer_kw)
        todo = [r for r in records if name not in r["scores"] and not r.get("_unreadable")]
        for i in bar(
            range(0, len(todo), batch_size),
            f"score {name}",
            total=math.ceil(len(todo) / batch_size),
            enabled=verbose,
        ):
            chunk, images = [], []
            for r in todo[i : i + batch_size]:
                try:
                    images.append(load_for_scoring(r["path"], max_side))
                    chunk.append(r)
                except Exception as e:  # noqa: BLE001 - file changed since ingest
                    drops.append(dropped(r["path"], "score", "unreadable", f"{type(e).__name__}: {e}"))
                    r["_unreadable"] = True
            for r, s in zip(chunk, fn(images) if images else []):
                r["scores"][name] = (
                    None if s is None or (isinstance(s, float) and math.isnan(s)) else float(s)
                )
    records = [r for r in records if not r.get("_unreadable")]  # dropped above, with a reason
    write_jsonl(work / "scored.jsonl", records)
    write_dropped(work, "score", drops)
    stats = {}
    for name in scorers:
        vals = [r["scores"][name] for r in records if r["scores"].get(name) is not None]
        if vals:
            stats[f"{name} mean (n={len(vals)})"] = f"{sum(vals) / len(vals):.3f}"
    summary("score", len(records), drops, stats, verbose)
    return {"scored": len(records)}
