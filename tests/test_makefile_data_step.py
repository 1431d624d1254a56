"""`make train` builds the embedded sample data set first (`make data`), saying so, when an experiment on it
finds it missing; otherwise it goes straight to training. Nothing else builds data as a side effect.

The Makefile runs for real in a throw-away folder (its own `data/`) with a stub ``python`` that records argv.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")

SAMPLE_FILES = ("data/sample_shards/train/shards.json", "data/sample_shards/val/shards.json",
                "data/sample_images/manifest.json")


def _make_train(work: Path, *args: str) -> tuple[list[list[str]], str]:
    for name in ("Makefile", "pyproject.toml", "requirements-lock.txt", "conf"):
        if not (work / name).exists():
            (work / name).symlink_to(REPO / name)
    venv = work / "venv"
    if not venv.exists():
        (venv / "bin").mkdir(parents=True)
        stub = venv / "bin" / "python"
        stub.write_text(f"#!{sys.executable}\nimport json, sys\n"
                        "with open(sys.argv[0] + '.argv', 'a') as f:\n"
                        "    f.write(json.dumps(sys.argv[1:]) + '\\n')\n")
        stub.chmod(0o755)
        (venv / ".pid-installed").touch()  # newer than Makefile/pyproject/lock: no install step
    log = venv / "bin" / "python.argv"
    log.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    proc = subprocess.run(["make", "-C", str(work), "train", *args, f"VENV={venv}"],
                          capture_output=True, text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return [c[:2] for c in calls], proc.stdout


def test_quickstart_builds_missing_sample_data_first_and_says_so(tmp_path):
    calls, out = _make_train(tmp_path)
    assert calls == [["-m", "data_prep"], ["-m", "pid.train"]]
    assert "running make data first" in out
    for f in SAMPLE_FILES:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("{}")
    calls, out = _make_train(tmp_path)
    assert calls == [["-m", "pid.train"]] and "make data" not in out


@pytest.mark.parametrize("args", [("exp=pid_vae_4x",), ("data.root=/data/mine",)])
def test_other_data_never_builds_the_sample_set(tmp_path, args):
    calls, out = _make_train(tmp_path, *args)
    assert calls == [["-m", "pid.train"]] and "make data" not in out
