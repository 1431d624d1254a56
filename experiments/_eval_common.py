"""Shared helper of the eval_*.py studies: compose conf/eval.yaml with a study's overrides and run it.

Extra command-line arguments are Hydra overrides (they win over the study's own), e.g.
    python experiments/eval_cascade.py ckpt=logs/.../pid_decoder.safetensors sr_cascade_ckpt=... \
        eval=quickstart
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_study(name: str, overrides: list[str], argv: list[str] | None = None) -> dict:
    from hydra import compose, initialize_config_dir

    from pid.evaluate import evaluate

    argv = list(sys.argv[1:] if argv is None else argv)
    out = ROOT / "logs" / "experiments" / name / time.strftime("%Y-%m-%d_%H-%M-%S")
    if not any(a.startswith("report.out_dir=") for a in argv):
        argv.append(f"report.out_dir={out}")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("eval", overrides=[*overrides, *argv])
    return evaluate(cfg)
