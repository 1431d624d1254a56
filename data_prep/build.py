"""build: ingest → render-pdfs → score → filter → write-shards in one call; and ``sample``, the
embedded offline data set (``make data``) that the quickstart trains from.

``build_sample_shards(out)`` makes the offline sample image set with ``data_prep.sample_set``
(scikit-image photos, Debian wallpapers when installed, rendered PDF pages) and turns its
``train/`` and ``val/`` folders into ``out/train`` and ``out/val`` shard sets, scored with NIQE
(or sharpness when the NIQE model is not installed). A complete build (``out/train/shards.json``
and ``out/val/shards.json``) is returned at once.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from data_prep.filter import filter_records
from data_prep.ingest import ingest
from data_prep.render_pdfs import DEFAULT_CAPTION, render_pdfs
from data_prep.score import score
from data_prep.shards import write_shards
from pid.data.buckets import make_buckets

log = logging.getLogger(__name__)


def build(
    work,
    out,
    folders=(),
    lists=(),
    multiaspect=(),
    pdfs=(),
    scorers=("niqe",),
    dpi: float = 150.0,
    caption: str = DEFAULT_CAPTION,
    max_pages: int | None = None,
    bucket_kind: str = "single",
    base_size: int = 2048,
    multiple: int = 64,
    min_scores=(),
    max_scores=(),
    phash_distance=None,
    shard_bytes: int = 256 << 20,
    max_per_shard: int = 10_000,
    shuffle_seed: int | None = 0,
    score_max_side: int = 1024,
    verbose: bool = True,
    **scorer_kw,
) -> dict:
    work = Path(work)
    ingest(work, folders, lists, multiaspect, verbose=verbose, pdfs=pdfs)
    if pdfs:
        render_pdfs(work, pdfs, dpi=dpi, caption=caption, max_pages=max_pages, verbose=verbose)
    else:
        (work / "pdf.jsonl").unlink(missing_ok=True)
        (work / "render_pdfs.dropped.jsonl").unlink(missing_ok=True)
    if scorers:
        score(work, scorers, max_side=score_max_side, verbose=verbose, **scorer_kw)
    else:
        (work / "scored.jsonl").unlink(missing_ok=True)
    buckets = make_buckets(bucket_kind, base_size, multiple)
    filter_records(work, buckets, min_scores, max_scores, phash_distance, verbose=verbose)
    extra = {"bucket_config": {"kind": bucket_kind, "base_size": base_size, "multiple": multiple}}
    return write_shards(work, out, shard_bytes, max_per_shard, shuffle_seed, verbose=verbose, extra=extra)


def sample_complete(out) -> bool:
    out = Path(out)
    return all((out / s / "shards.json").is_file() for s in ("train", "val"))


def default_scorers() -> tuple[str, ...]:
    from pid.eval.niqe import params_path

    try:
        return ("niqe",) if params_path().is_file() else ("sharpness",)
    except FileNotFoundError:
        return ("sharpness",)


def build_sample_shards(
    out,
    images_dir=None,
    base_size: int = 128,
    multiple: int = 32,
    max_images: int | None = None,
    shard_bytes: int = 4 << 20,
    force: bool = False,
    verbose: bool = True,
) -> dict:
    """The embedded data set as shards under ``out/train`` and ``out/val`` (offline, a minute or so)."""
    from data_prep.sample_set import build_sample_set

    out = Path(out)
    if sample_complete(out) and not force:
        if verbose:
            print(f"sample shards already at {out}")
        return json.loads((out / "train" / "shards.json").read_text())
    images_dir = Path(images_dir) if images_dir else out.parent / "sample_images"
    build_sample_set(images_dir, max_images=max_images, verbose=verbose)
    scorers = default_scorers()
    result = {}
    for split in ("train", "val"):
        result[split] = build(
            out / "work" / split,
            out / split,
            folders=[images_dir / split],
            scorers=scorers,
            bucket_kind="single",
            base_size=base_size,
            multiple=multiple,
            shard_bytes=shard_bytes,
            score_max_side=512,
            verbose=verbose,
        )
    return result["train"]
