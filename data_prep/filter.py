"""filter / dedupe: ``W/scored.jsonl`` (or the ingest outputs) → ``W/filtered.jsonl``.

In order, each with a reason in ``W/filter.dropped.jsonl``:
1. ``duplicate``: exact content duplicates (same sha256 of the file bytes); the first key wins;
2. ``near_duplicate`` (``--phash-distance D``): 64-bit difference hash within Hamming distance D
   of an earlier image (off by default);
3. ``too_small``: fits no bucket of the chosen bucket set (images are never upsampled);
4. ``low_quality``: ``--min-score name=value`` / ``--max-score name=value`` thresholds (a record
   without that score is kept and counted as ``unscored``).
Re-running with other thresholds re-reads the same scores: nothing is recomputed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from data_prep.progress import bar, summary
from data_prep.records import dropped, read_jsonl, write_dropped, write_jsonl
from pid.data.buckets import BucketSet, make_buckets
from pid.data.io import open_image, to_rgb8, upright


def dhash(path: str, size: int = 8) -> int:
    """Difference hash: sign of horizontal gradients of a (size+1)×size greyscale thumbnail."""
    with open_image(path) as im:
        im.draft("L", (64, 64))
        grey = to_rgb8(upright(im)).convert("L").resize((size + 1, size), Image.BILINEAR)
        g = np.asarray(grey, dtype=np.int16)
    bits = (g[:, 1:] > g[:, :-1]).ravel()
    return int("".join("1" if b else "0" for b in bits), 2)


def parse_thresholds(items) -> dict[str, float]:
    out = {}
    for it in items or ():
        name, _, value = it.partition("=")
        out[name.strip()] = float(value)
    return out


def filter_records(
    work,
    buckets: BucketSet | None = None,
    min_scores=(),
    max_scores=(),
    phash_distance: int | None = None,
    verbose: bool = True,
) -> dict:
    work = Path(work)
    src = work / "scored.jsonl"
    records = (
        read_jsonl(src)
        if src.is_file()
        else read_jsonl(work / "ingest.jsonl") + read_jsonl(work / "pdf.jsonl")
    )
    buckets = buckets or make_buckets("single")
    lo, hi = parse_thresholds(min_scores), parse_thresholds(max_scores)
    kept, drops, seen, hashes, unscored = [], [], {}, [], 0
    for r in bar(records, "filter", enabled=verbose):
        if r["sha256"] in seen:
            drops.append(dropped(r["path"], "filter", "duplicate", f"same bytes as {seen[r['sha256']]}"))
            continue
        seen[r["sha256"]] = r["key"]
        if phash_distance is not None:
            h = dhash(r["path"])
            near = next((k for k, h2 in hashes if (h ^ h2).bit_count() <= phash_distance), None)
            if near is not None:
                drops.append(
                    dropped(r["path"], "filter", "near_duplicate", f"dHash within {phash_distance} of {near}")
                )
                continue
            hashes.append((r["key"], h))
        b = buckets.assign(r["width"], r["height"])
        if b is None:
            drops.append(
                dropped(
                    r["path"],
                    "filter",
                    "too_small",
                    f"{r['width']}x{r['height']} fits no bucket "
                    f"(smallest {buckets.min_area_bucket.label}); never upsampled",
                )
            )
            continue
        bad = None
        for name, th in lo.items():
            s = r.get("scores", {}).get(name)
            unscored += s is None
            if s is not None and s < th:
                bad = f"{name}={s:.3f} < {th}"
        for name, th in hi.items():
            s = r.get("scores", {}).get(name)
            unscored += s is None
            if s is not None and s > th:
                bad = f"{name}={s:.3f} > {th}"
        if bad:
            drops.append(dropped(r["path"], "filter", "low_quality", bad))
            continue
        r["bucket"] = b.label
        kept.append(r)
    write_jsonl(work / "filtered.jsonl", kept)
    write_dropped(work, "filter", drops)
    summary("filter", len(kept), drops, {"unscored (kept)": unscored}, verbose)
    return {"kept": len(kept), "dropped": len(drops)}
