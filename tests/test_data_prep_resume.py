"""Shard writing is atomic and resumable: SIGKILL midway, re-run → byte-identical shards."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from data_prep.filter import filter_records
from data_prep.ingest import ingest
from data_prep.shards import KILL_ENV, write_shards
from pid.data.buckets import make_buckets

from conftest import photo

ROOT = Path(__file__).resolve().parents[1]


def _work(tmp_path: Path) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, name in enumerate(["astronaut", "coffee", "chelsea", "rocket", "camera", "moon", "coins"]):
        Image.fromarray(photo(name, (64 + 8 * i, 64))).save(folder / f"{name}.{'jpg' if i % 2 else 'png'}")
        (folder / f"{name}.txt").write_text(f"a photo: {name}")
    work = tmp_path / "work"
    ingest(work, [folder], verbose=False)
    filter_records(work, make_buckets("single", 64, 16), verbose=False)
    return work


def _tree(out: Path) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes()
        for p in sorted(out.iterdir())
        if p.suffix in (".tar", ".jsonl") or p.name == "shards.json"
    }


def test_killed_shard_writing_resumes_to_identical_shards(tmp_path):
    work = _work(tmp_path)
    kw = {
        "shard_bytes": 1,
        "max_per_shard": 1,
        "shuffle_seed": 0,
        "verbose": False,
    }  # one sample per shard: 7 shards
    write_shards(work, tmp_path / "ref", **kw)
    ref = _tree(tmp_path / "ref")
    assert len([k for k in ref if k.endswith(".tar")]) == 7

    out = tmp_path / "killed"
    code = (
        f"from data_prep.shards import write_shards; write_shards({str(work)!r}, {str(out)!r}, "
        "shard_bytes=1, max_per_shard=1, shuffle_seed=0, verbose=False)"
    )
    env = {**os.environ, KILL_ENV: "3", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", code], check=False, env=env, cwd=ROOT, capture_output=True, timeout=120
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    tars = sorted(p.name for p in out.glob("*.tar"))
    assert tars == [f"shard-{i:06d}.tar" for i in range(3)]  # finished shards only …
    assert list(out.glob("shard-000003.tar.tmp"))  # … the half-written one is invisible to readers
    for name in tars:
        assert (out / name).read_bytes() == ref[name]  # finished shards are complete

    index = write_shards(work, out, **kw)
    assert _tree(out) == ref
    assert not list(out.glob("*.tmp"))
    import json

    report = json.loads((out / "report.json").read_text())
    assert report["resumed_shards"] == 3 and report["written_shards"] == 4
    assert index["count"] == 7


def test_changed_inputs_rebuild_the_plan(tmp_path):
    work = _work(tmp_path)
    write_shards(work, tmp_path / "o", shard_bytes=10**9, max_per_shard=2, verbose=False)
    assert len(list((tmp_path / "o").glob("*.tar"))) == 4
    write_shards(work, tmp_path / "o", shard_bytes=10**9, max_per_shard=3, verbose=False)
    assert len(list((tmp_path / "o").glob("*.tar"))) == 3  # stale shards of the old plan removed


def test_cli_stages_in_order(tmp_path):
    from data_prep.__main__ import main

    work = _work(tmp_path)  # ingest + filter done; now the CLI re-runs every stage
    folder, out = tmp_path / "imgs", tmp_path / "cli_out"
    assert main(["ingest", "-q", "--work", str(work), "--folder", str(folder)]) == 0
    assert main(["score", "-q", "--work", str(work), "--scorer", "sharpness"]) == 0
    assert main(["filter", "-q", "--work", str(work), "--base-size", "64", "--multiple", "16"]) == 0
    assert main(["write-shards", "-q", "--work", str(work), "--out", str(out), "--shard-bytes", "20KB"]) == 0
    import json

    index = json.loads((out / "shards.json").read_text())
    assert index["count"] == 7 and len(index["shards"]) >= 2
    assert all(
        r["scores"]["sharpness"] > 0
        for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())
    )


def test_sample_shards_build_offline(tmp_path):
    from data_prep.build import build_sample_shards, sample_complete

    index = build_sample_shards(
        tmp_path / "sample_shards", images_dir=tmp_path / "sample_images", max_images=6, verbose=False
    )
    assert sample_complete(tmp_path / "sample_shards") and index["count"] >= 3
    assert set(index["buckets"]) <= {"128x128", "128x96", "96x128", "160x96", "96x160"}
