"""Records (one image each) and dropped inputs as JSON-lines files, written atomically.

A record::

    {"key": "photos_cat_01", "source": "folder", "path": "/abs/file.jpg", "width": 4000,
     "height": 3000, "format": "JPEG", "mode": "RGB", "orientation": 1, "bytes": 123456,
     "sha256": "…", "captions": {"long": "…", "medium": "…", "short": "…"},
     "meta": {...original metadata...}, "scores": {"niqe": 3.1}, "convert": "cmyk->rgb"}

A dropped input::  {"path": "...", "stage": "ingest", "reason": "truncated", "detail": "..."}
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

DROP_SUFFIX = ".dropped.jsonl"


def safe_key(text: str) -> str:
    """A WebDataset-safe sample key: no dots (they split extensions), no slashes or spaces."""
    key = re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")
    return key or "sample"


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Write rows to ``path`` atomically (tmp file + rename); returns the row count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def dropped(path, stage: str, reason: str, detail: str = "") -> dict:
    return {"path": str(path), "stage": stage, "reason": reason, "detail": str(detail)[:300]}


def write_dropped(work: str | os.PathLike, stage: str, rows: list[dict]) -> Path:
    out = Path(work) / f"{stage}{DROP_SUFFIX}"
    write_jsonl(out, rows)
    return out


def read_all_dropped(work: str | os.PathLike) -> list[dict]:
    """Every ``*.dropped.jsonl`` of a work directory, in stage-name order."""
    rows: list[dict] = []
    for p in sorted(Path(work).glob(f"*{DROP_SUFFIX}")):
        rows += read_jsonl(p)
    return rows


def unique_keys(records: list[dict]) -> None:
    """Make ``key`` unique in place (``_2``, ``_3`` … suffixes), keeping the first as is."""
    seen: dict[str, int] = {}
    for r in records:
        k = r["key"]
        if k in seen:
            seen[k] += 1
            r["key"] = f"{k}_{seen[k]}"
        else:
            seen[k] = 1
