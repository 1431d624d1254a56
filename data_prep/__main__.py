"""``python -m data_prep <command> ...``: see ``python -m data_prep -h`` and the package docstring."""

from __future__ import annotations

import argparse
import logging
import sys

from data_prep.render_pdfs import DEFAULT_CAPTION


def _size(text: str) -> int:
    t = text.strip().upper()
    for suffix, mult in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if t.endswith(suffix):
            return int(float(t[: -len(suffix)]) * mult)
    return int(t)


def _add_sources(p):
    p.add_argument("--folder", action="append", default=[], help="image folder (repeatable)")
    p.add_argument("--list", action="append", default=[], help="file list: path[<TAB>caption] per line")
    p.add_argument("--multiaspect", action="append", default=[], help="MultiAspect-4K-1M root")


def _add_buckets(p):
    p.add_argument("--buckets", default="single", choices=["single", "multi", "square"])
    p.add_argument("--base-size", type=int, default=2048)
    p.add_argument("--multiple", type=int, default=64)


def _add_scoring(p):
    p.add_argument("--qalign-path", default=None, help="local Q-Align checkpoint directory")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the checkpoint's own Python code")
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-side", type=int, default=1024, help="images are scored reduced to this side")


def _add_filter(p):
    p.add_argument("--min-score", action="append", default=[], help="name=value, e.g. qalign=3.5")
    p.add_argument("--max-score", action="append", default=[], help="name=value, e.g. niqe=6")
    p.add_argument(
        "--phash-distance", type=int, default=None, help="drop near duplicates within this dHash distance"
    )


def _add_shards(p):
    p.add_argument("--out", required=True, help="output directory of the shards")
    p.add_argument("--shard-bytes", type=_size, default="256MB")
    p.add_argument("--max-per-shard", type=int, default=10_000)
    p.add_argument(
        "--shuffle-seed", type=int, default=0, help="deterministic shuffle before sharding (-1: keep order)"
    )


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars or summaries")
    ap = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    _add_parser = sub.add_parser
    sub.add_parser = lambda *a, **k: _add_parser(*a, parents=[common], **k)  # every command takes -q
    p = sub.add_parser("ingest", help="image folders / lists / MultiAspect-4K-1M -> W/ingest.jsonl")
    p.add_argument("--work", required=True)
    _add_sources(p)
    p = sub.add_parser("render-pdfs", help="PDF pages -> PNG + W/pdf.jsonl")
    p.add_argument("--work", required=True)
    p.add_argument("pdfs", nargs="+", help="PDF files or folders")
    p.add_argument("--dpi", type=float, default=150.0)
    p.add_argument("--caption", default=DEFAULT_CAPTION)
    p.add_argument("--max-pages", type=int, default=None)
    p = sub.add_parser("score", help="add quality scores -> W/scored.jsonl")
    p.add_argument("--work", required=True)
    p.add_argument(
        "--scorer", action="append", default=None, help="niqe | sharpness | qalign | brisque (repeatable)"
    )
    _add_scoring(p)
    p = sub.add_parser("filter", help="dedupe, min size per bucket, score thresholds -> W/filtered.jsonl")
    p.add_argument("--work", required=True)
    _add_buckets(p)
    _add_filter(p)
    p = sub.add_parser("write-shards", help="W/filtered.jsonl -> WebDataset shards + manifest + report")
    p.add_argument("--work", required=True)
    _add_shards(p)
    p = sub.add_parser("build", help="all stages in one call")
    p.add_argument("--work", required=True)
    _add_sources(p)
    p.add_argument("--pdf", action="append", default=[], help="PDF file or folder (repeatable)")
    p.add_argument("--dpi", type=float, default=150.0)
    p.add_argument("--caption", default=DEFAULT_CAPTION)
    p.add_argument("--max-pages", type=int, default=None)
    p.add_argument("--scorer", action="append", default=None)
    _add_scoring(p)
    _add_buckets(p)
    _add_filter(p)
    _add_shards(p)
    p = sub.add_parser("sample", help="the embedded offline data set as shards (make data)")
    p.add_argument("--out", default="data/sample_shards")
    p.add_argument(
        "--images-dir",
        default=None,
        help="where the sample image set is built (default: OUT/../sample_images)",
    )
    p.add_argument("--base-size", type=int, default=128)
    p.add_argument("--multiple", type=int, default=32)
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--force", action="store_true")
    return ap


def _scorer_kwargs(args) -> dict:
    if not hasattr(args, "qalign_path"):
        return {}
    return {
        "qalign_path": args.qalign_path,
        "trust_remote_code": args.trust_remote_code,
        "device": args.device,
    }


def _shuffle_seed(args) -> int | None:
    return None if args.shuffle_seed < 0 else args.shuffle_seed


def _run_ingest(args, v: bool) -> None:
    from data_prep.ingest import ingest

    ingest(args.work, args.folder, args.list, args.multiaspect, verbose=v)


def _run_render_pdfs(args, v: bool) -> None:
    from data_prep.render_pdfs import render_pdfs

    render_pdfs(args.work, args.pdfs, args.dpi, args.caption, args.max_pages, verbose=v)


def _run_score(args, v: bool) -> None:
    from data_prep.score import score

    score(
        args.work,
        args.scorer or ["niqe"],
        max_side=args.max_side,
        batch_size=args.batch_size,
        verbose=v,
        **_scorer_kwargs(args),
    )


def _run_filter(args, v: bool) -> None:
    from data_prep.filter import filter_records
    from pid.data.buckets import make_buckets

    filter_records(
        args.work,
        make_buckets(args.buckets, args.base_size, args.multiple),
        args.min_score,
        args.max_score,
        args.phash_distance,
        verbose=v,
    )


def _run_write_shards(args, v: bool) -> None:
    from data_prep.shards import write_shards

    write_shards(args.work, args.out, args.shard_bytes, args.max_per_shard, _shuffle_seed(args), verbose=v)


def _run_build(args, v: bool) -> None:
    from data_prep.build import build

    build(
        args.work,
        args.out,
        args.folder,
        args.list,
        args.multiaspect,
        args.pdf,
        args.scorer or ["niqe"],
        args.dpi,
        args.caption,
        args.max_pages,
        args.buckets,
        args.base_size,
        args.multiple,
        args.min_score,
        args.max_score,
        args.phash_distance,
        args.shard_bytes,
        args.max_per_shard,
        _shuffle_seed(args),
        score_max_side=args.max_side,
        verbose=v,
        batch_size=args.batch_size,
        **_scorer_kwargs(args),
    )


def _run_sample(args, v: bool) -> None:
    from data_prep.build import build_sample_shards

    build_sample_shards(
        args.out,
        args.images_dir,
        args.base_size,
        args.multiple,
        args.max_images,
        force=args.force,
        verbose=v,
    )


_COMMANDS = {
    "ingest": _run_ingest,
    "render-pdfs": _run_render_pdfs,
    "score": _run_score,
    "filter": _run_filter,
    "write-shards": _run_write_shards,
    "build": _run_build,
    "sample": _run_sample,
}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    command = _COMMANDS.get(args.cmd)
    if command is not None:
        command(args, not args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
