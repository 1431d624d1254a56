"""`make train/eval/sweep key=value ...`: every command-line override reaches Hydra as one argument, exactly.

The Makefile is run for real (GNU make, bash) with a stub ``python`` in a throw-away ``VENV`` that records its
argv, so the test sees what the recipe's shell really hands the interpreter.
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


def _stub_venv(tmp_path: Path) -> Path:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    stub = venv / "bin" / "python"
    stub.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        "with open(sys.argv[0] + '.argv', 'a') as f:\n    f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    stub.chmod(0o755)
    (venv / ".pid-installed").touch()  # newer than Makefile/pyproject/lock: no install step
    return venv


def _make(tmp_path: Path, *args: str) -> tuple[list[list[str]], subprocess.CompletedProcess]:
    venv = _stub_venv(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    proc = subprocess.run(
        ["make", "-s", "-C", str(REPO), *args, f"VENV={venv}"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    log = venv / "bin" / "python.argv"
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return calls, proc


# Values that a word-splitting Makefile breaks: a space (the reported case), a list with a space, a quote and
# `$` signs (Hydra interpolations must arrive unexpanded), a backslash, a tab, a comma sweep.
TRICKY = [
    "data.root=/data/my photos",
    "+model.x=[1, 2]",
    "trainer.name=it's $HOME $$x ${oc.env:USER}",
    r"data.glob=C:\images\*.png",
    "logger.tag=a\tb",
]


@pytest.mark.parametrize(
    "target,head",
    [
        ("train", ["-m", "pid.train", "experiment=quickstart"]),
        ("sweep", ["-m", "pid.train", "--multirun", "experiment=quickstart"]),
        ("eval", ["-m", "pid.evaluate"]),
    ],
)
def test_each_override_reaches_python_as_one_argument_in_order(tmp_path, target, head):
    calls, proc = _make(tmp_path, target, *TRICKY, "trainer.max_steps=5")
    assert proc.returncode == 0, proc.stderr
    assert calls == [head + TRICKY + ["trainer.max_steps=5"]]


def test_makes_own_variables_are_not_passed_and_exp_selects_the_experiment(tmp_path):
    calls, proc = _make(tmp_path, "train", "exp=pid_vae_8x", "data.root=/data/my photos", "ARGS=-x",
                        "PYTHON=py")
    assert proc.returncode == 0, proc.stderr
    assert calls == [["-m", "pid.train", "experiment=pid_vae_8x", "data.root=/data/my photos"]]


def test_no_overrides_passes_none(tmp_path):
    calls, proc = _make(tmp_path, "train", "exp=pid_vae_8x")  # (quickstart would build the sample data first)
    assert proc.returncode == 0, proc.stderr
    assert calls == [["-m", "pid.train", "experiment=pid_vae_8x"]]


def test_a_newline_in_a_value_stops_make_with_a_reason(tmp_path):
    calls, proc = _make(tmp_path, "train", "data.root=/data/a\nb")
    assert proc.returncode != 0 and calls == []
    assert "newline" in proc.stderr
