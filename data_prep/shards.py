"""write-shards: ``W/filtered.jsonl`` → WebDataset tar shards, a manifest and a report.

Layout of ``OUT``::

    shard-000000.tar …        samples <key>.<jpg|png|webp> (bytes as ingested when possible,
                              else an RGB PNG), <key>.json (metadata), <key>.txt (caption)
    shard-000000.jsonl …      the metadata lines of that shard (written before its tar)
    plan.json                 the shard plan and its fingerprint
    manifest.jsonl            one line per sample: shard, key, size, bucket, captions, scores
    shards.json               shard list with counts (the loader reads this)
    report.{json,md}, hist_*.png

- fixed target shard size (``shard_bytes`` of source bytes, and at most ``max_per_shard``);
- atomic: each tar is written to ``.tmp`` and renamed; a killed run leaves no partial shard;
- resumable: a shard whose tar and sidecar exist is skipped when the plan is unchanged;
- deterministic: the plan depends only on the records (order, or a seeded shuffle) and the
  sizes; tar metadata is fixed, so a re-run after a kill gives byte-identical shards.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
from collections import Counter
from pathlib import Path

from PIL import Image

from data_prep.probe import KEEP_FORMATS
from data_prep.progress import bar, summary
from data_prep.records import read_all_dropped, read_jsonl, write_jsonl
from data_prep.report import write_report
from data_prep.tar_writer import write_tar_atomic
from pid.data.io import decode_rgb

FORMAT = "pid.shards.v1"
KILL_ENV = "PID_DATA_PREP_KILL_AFTER"  # tests: SIGKILL ourselves while writing shard N (0-based)


def plan_shards(records: list[dict], shard_bytes: int, max_per_shard: int) -> list[list[dict]]:
    groups, cur, size = [], [], 0
    for r in records:
        if cur and (size + r["bytes"] > shard_bytes or len(cur) >= max_per_shard):
            groups.append(cur)
            cur, size = [], 0
        cur.append(r)
        size += r["bytes"]
    if cur:
        groups.append(cur)
    return groups


def payload(r: dict) -> tuple[str, bytes]:
    """(extension, bytes): the file as is when possible, else the upright 8-bit RGB PNG that the one
    decoder (``pid.data.io.decode_rgb``) makes of it. Raises ``OSError`` if the file changed."""
    data = Path(r["path"]).read_bytes()
    if hashlib.sha256(data).hexdigest() != r["sha256"]:
        raise OSError(f"{r['path']} changed since ingest")
    if not r.get("convert") and r["format"] in KEEP_FORMATS:
        return KEEP_FORMATS[r["format"]], data
    buf = io.BytesIO()
    Image.fromarray(decode_rgb(data)).save(buf, format="PNG", compress_level=6)
    return "png", buf.getvalue()


def sample_meta(r: dict, shard: str) -> dict:
    caps = r.get("captions") or {}
    return {"key": r["key"], "shard": shard, "source": r["source"], "origin": r["path"],
            "width": r["width"], "height": r["height"], "bucket": r.get("bucket"),
            "captions": caps, "scores": r.get("scores", {}), "meta": r.get("meta", {}),
            "convert": r.get("convert"), "sha256": r["sha256"]}  # fmt: skip


def _members(group: list[dict], shard: str, metas: list[dict]):
    for r, m in zip(group, metas):
        ext, data = payload(r)
        caps = r.get("captions") or {}
        caption = caps.get("long") or next(iter(caps.values()), "")
        yield f"{r['key']}.{ext}", data
        yield f"{r['key']}.json", json.dumps(m, sort_keys=True, ensure_ascii=False).encode()
        yield f"{r['key']}.txt", caption.encode()


def _select_records(work: Path, shuffle_seed: int | None, split_name: str | None) -> list[dict]:
    records = read_jsonl(work / "filtered.jsonl")
    if split_name is not None:
        records = [r for r in records if r.get("split", "train") == split_name]
    if shuffle_seed is not None:
        records.sort(key=lambda r: hashlib.sha256(f"{shuffle_seed}:{r['key']}".encode()).hexdigest())
    return records


def _sync_plan(out: Path, prefix: str, names: list[str], groups: list[list[dict]]) -> str:
    """Write ``plan.json`` (clearing the old shards when the plan changed); returns its fingerprint."""
    plan = {"format": FORMAT, "shards": [[r["key"] + ":" + r["sha256"] for r in g] for g in groups]}
    fingerprint = hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()
    old = json.loads((out / "plan.json").read_text()) if (out / "plan.json").is_file() else {}
    if old.get("fingerprint") != fingerprint:  # different inputs: start over
        for p in (
            list(out.glob(f"{prefix}-*.tar")) + list(out.glob(f"{prefix}-*.jsonl")) + [out / "shards.json"]
        ):
            p.unlink(missing_ok=True)
        tmp = out / "plan.json.tmp"
        tmp.write_text(json.dumps({"fingerprint": fingerprint, "shards": names, **plan}, sort_keys=True))
        os.replace(tmp, out / "plan.json")
    for stale in out.glob("*.tmp"):
        stale.unlink()
    return fingerprint


def _write_planned(
    out: Path, names: list[str], groups: list[list[dict]], verbose: bool
) -> tuple[list[dict], int, int]:
    """Write each planned shard not already complete; returns (shard rows, resumed, written)."""
    kill_at = int(os.environ[KILL_ENV]) if os.environ.get(KILL_ENV) else None
    shard_rows, resumed, written, failed = [], 0, 0, []
    for i, (name, group) in enumerate(bar(list(zip(names, groups)), "write-shards", enabled=verbose)):
        tar, side = out / f"{name}.tar", out / f"{name}.jsonl"
        metas = [sample_meta(r, name) for r in group]
        if tar.is_file() and side.is_file():
            resumed += 1
        else:
            write_jsonl(side, metas)

            def maybe_die(member: int, i=i):
                if kill_at is not None and i == kill_at and member == 2:
                    os.kill(os.getpid(), signal.SIGKILL)  # half-written .tmp left behind

            try:
                write_tar_atomic(tar, _members(group, name, metas), on_member=maybe_die)
            except OSError as e:
                failed.append(f"{name}: {e}")
                raise
            written += 1
        shard_rows.append(
            {
                "file": tar.name,
                "count": len(group),
                "bytes": tar.stat().st_size,
                "buckets": dict(sorted(Counter(r.get("bucket") for r in group).items())),
            }
        )
    return shard_rows, resumed, written


def _write_index(
    out: Path, fingerprint: str, records: list[dict], shard_rows: list[dict], extra: dict | None
) -> dict:
    index = {
        "format": FORMAT,
        "fingerprint": fingerprint,
        "count": len(records),
        "shards": shard_rows,
        "buckets": dict(sorted(Counter(r.get("bucket") for r in records).items())),
        **(extra or {}),
    }
    tmp = out / "shards.json.tmp"
    tmp.write_text(json.dumps(index, indent=1, sort_keys=True))
    os.replace(tmp, out / "shards.json")
    return index


def write_shards(
    work,
    out,
    shard_bytes: int = 256 << 20,
    max_per_shard: int = 10_000,
    shuffle_seed: int | None = None,
    prefix: str = "shard",
    split_name: str | None = None,
    verbose: bool = True,
    extra: dict | None = None,
) -> dict:
    work, out = Path(work), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = _select_records(work, shuffle_seed, split_name)
    groups = plan_shards(records, shard_bytes, max_per_shard)
    names = [f"{prefix}-{i:06d}" for i in range(len(groups))]
    fingerprint = _sync_plan(out, prefix, names, groups)
    shard_rows, resumed, written = _write_planned(out, names, groups, verbose)
    write_jsonl(out / "manifest.jsonl", [m for name in names for m in read_jsonl(out / f"{name}.jsonl")])
    index = _write_index(out, fingerprint, records, shard_rows, extra)
    drops = read_all_dropped(work)
    report = write_report(
        out, records, drops, shard_rows, {"resumed_shards": resumed, "written_shards": written}
    )
    summary(
        "write-shards",
        len(records),
        drops,
        {
            "shards": len(names),
            "written": written,
            "resumed": resumed,
            "converted": len(report["converted"]),
            "out": out,
        },
        verbose,
    )
    return index
