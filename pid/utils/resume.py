"""Auto-resume: re-running the same experiment continues from its last checkpoint.

``resume: auto`` (the default in conf/train.yaml) with ``ckpt_path: null``:

1. the run's own folder (``paths.output_dir``) when it already holds checkpoints of an unfinished run
   (a stable folder, e.g. ``hydra.run.dir=logs/<task>/runs/<run_name>``, or a SLURM requeue that
   reuses the folder);
2. otherwise the earlier runs of the same experiment under ``<paths.log_dir>/<task_name>/runs/*``: a
   folder matches when its ``run_identity.json`` has the same task name, run name and command-line
   overrides (ignoring ``resume``, ``ckpt_path``, ``trainer.max_steps``/``max_epochs`` and ``hydra.*``),
   and it is not marked finished (``run_complete.json``).

The newest checkpoint of those folders (``checkpoints/*.ckpt``, Lightning's ``hpc_ckpt_*.ckpt``) is
resumed, and the run continues in that folder (``paths.output_dir`` is set to it), so checkpoints,
CSV/W&B logs and grids of one experiment stay together. ``resume: never`` always starts fresh.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)

IDENTITY = "run_identity.json"
COMPLETE = "run_complete.json"
IGNORED_KEYS = ("resume", "ckpt_path", "trainer.max_steps", "trainer.max_epochs")


def _hydra_overrides() -> list[str] | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return list(HydraConfig.get().overrides.task)
    except Exception:  # noqa: BLE001 - not under Hydra's main
        pass
    return None


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def run_identity(cfg: DictConfig, overrides: list[str] | None = None) -> dict:
    overrides = _hydra_overrides() if overrides is None else overrides
    kept = sorted(o for o in (overrides or [])
                  if not _key(o).startswith("hydra.") and _key(o) not in IGNORED_KEYS)
    return {"task_name": cfg.get("task_name"), "run_name": cfg.get("run_name"), "overrides": kept}


def _checkpoints(run_dir: Path) -> list[Path]:
    found = list((run_dir / "checkpoints").glob("*.ckpt")) + list(run_dir.glob("hpc_ckpt_*.ckpt"))
    return [p for p in found if p.is_file()]


def _newest(paths: list[Path]) -> Path | None:
    return max(paths, key=lambda p: (p.stat().st_mtime, p.name == "last.ckpt"), default=None)


def is_complete(run_dir: Path) -> bool:
    return (run_dir / COMPLETE).is_file()


def find_resume_checkpoint(cfg: DictConfig, overrides: list[str] | None = None) -> tuple[Path, Path] | None:
    """(checkpoint, its run folder) to resume, or None to start fresh."""
    out = Path(cfg.paths.output_dir)
    if not is_complete(out) and _checkpoints(out):
        return _newest(_checkpoints(out)), out
    runs = Path(cfg.paths.log_dir) / str(cfg.task_name) / "runs"
    if not runs.is_dir():
        return None
    ident = run_identity(cfg, overrides)
    best: tuple[Path, Path] | None = None
    for d in runs.iterdir():
        if d.resolve() == out.resolve() or not (d / IDENTITY).is_file() or is_complete(d):
            continue
        try:
            if json.loads((d / IDENTITY).read_text()) != ident:
                continue
        except (OSError, ValueError):
            continue
        ckpt = _newest(_checkpoints(d))
        if ckpt is not None and (best is None or ckpt.stat().st_mtime > best[0].stat().st_mtime):
            best = (ckpt, d)
    return best


def prepare_run(cfg: DictConfig) -> str | None:
    """Decide where the run starts from; returns the checkpoint path to pass to ``trainer.fit`` (or None).

    Mutates ``cfg.paths.output_dir`` to the resumed run's folder when resuming an earlier folder, and
    writes ``run_identity.json`` into the run folder."""
    if cfg.get("ckpt_path"):
        return cfg.ckpt_path
    mode = str(cfg.get("resume", "never") or "never")
    out = Path(cfg.paths.output_dir)
    found = find_resume_checkpoint(cfg) if mode == "auto" else None
    if found is None:
        if mode not in ("auto", "never"):
            raise ValueError(
                f"resume must be 'auto' or 'never' (got {mode!r}); set ckpt_path to resume a file"
            )
        out.mkdir(parents=True, exist_ok=True)
        (out / COMPLETE).unlink(missing_ok=True)
        (out / IDENTITY).write_text(json.dumps(run_identity(cfg), indent=1))
        return None
    ckpt, run_dir = found
    if run_dir.resolve() != out.resolve():
        out.mkdir(parents=True, exist_ok=True)
        (out / "RESUMED_IN.txt").write_text(f"{run_dir}\n")
        with open_dict(cfg):
            cfg.paths.output_dir = str(run_dir)
    with open(run_dir / "resume.log", "a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} resumed from {ckpt.name} (launched in {out})\n")
    log.info("auto-resume: continuing %s from %s (resume=never to start fresh)", run_dir, ckpt)
    return str(ckpt)


def mark_complete(output_dir: str | Path, global_step: int) -> None:
    Path(output_dir, COMPLETE).write_text(json.dumps({"global_step": int(global_step),
                                                      "time": time.strftime("%Y-%m-%d %H:%M:%S")}))


__all__ = ["find_resume_checkpoint", "prepare_run", "mark_complete", "run_identity", "is_complete"]
