"""`make sweep` runs a real Hydra multirun: the 2-point grid of conf/hparams_search/grid.yaml on the
quickstart at tiny size, each job in its own folder with its own metrics and W&B run, all in one W&B group.
The Optuna example composes and returns the configured metric."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from conftest import CONF_DIR, tiny_train_overrides

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_make_sweep_grid_runs_each_job_in_its_own_folder(tiny_image_root, tmp_path):
    overrides = [o for o in tiny_train_overrides(tiny_image_root, tmp_path)
                 if not o.startswith(("paths.output_dir=", "experiment=", "~", "logger="))]
    overrides += ["hparams_search=grid", "logger=default", "callbacks.progress=null",
                  "trainer.enable_progress_bar=false", "trainer.max_steps=2", "trainer.val_check_interval=2",
                  "++trainer.limit_val_batches=1", "callbacks.model_checkpoint.every_n_train_steps=2",
                  "callbacks.image_grid.every_n_steps=0", "compare=false"]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
    env.pop("MAKEFLAGS", None)
    proc = subprocess.run(["make", "sweep", "exp=quickstart", *overrides], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    sweeps = list((tmp_path / "logs" / "quickstart" / "multiruns").iterdir())
    assert len(sweeps) == 1
    jobs = sorted(p for p in sweeps[0].iterdir() if p.is_dir() and p.name.isdigit())
    assert [j.name for j in jobs] == ["0", "1"]
    lrs, groups, names = set(), set(), set()
    for job in jobs:
        metrics = json.loads((job / "metrics.json").read_text())
        assert metrics["optimized_metric"] == "val/loss" and metrics["value"] > 0
        assert (job / "checkpoints" / "last.ckpt").is_file() and (job / "pid_decoder.safetensors").is_file()
        assert list((job / "wandb").glob("offline-run-*")), "one offline W&B run per job"
        cfg = yaml.safe_load((job / "resolved_config.yaml").read_text())
        lrs.add(cfg["model"]["optimizer"]["lr"])
        groups.add(cfg["logger"]["wandb"]["group"])
        names.add(cfg["logger"]["wandb"]["name"])
        assert "sweep" in cfg["logger"]["wandb"]["tags"] and "quickstart" in cfg["logger"]["wandb"]["tags"]
    assert lrs == {5e-4, 1e-3}
    assert len(groups) == 1 and groups.pop().startswith("quickstart-sweep-")
    assert len(names) == 2


def test_optuna_search_composes_and_minimises_the_configured_metric():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=quickstart", "hparams_search=optuna",
                                          "paths.output_dir=/tmp/out"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "minimize"
    assert "model.optimizer.lr" in sweeper.params and cfg.optimized_metric == "val/loss"


@pytest.mark.parametrize("overrides", [
    ["trainer=fsdp"], ["trainer=ddp_multinode"], ["hydra/launcher=slurm"], ["hydra/launcher=local"],
    ["hparams_search=grid"], ["compile=true"], ["resume=never"],
])
def test_scaleout_configs_compose(overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=quickstart", "paths.output_dir=/tmp/out", *overrides],
                      return_hydra_config=True)
    from omegaconf import OmegaConf

    OmegaConf.to_container(cfg.trainer, resolve=True)
    if overrides[0] == "hydra/launcher=slurm":
        assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
        assert cfg.hydra.launcher.tasks_per_node == cfg.hydra.launcher.gpus_per_node
    if overrides[0] == "trainer=fsdp":
        from hydra.utils import instantiate

        strategy = instantiate(cfg.trainer.strategy)
        assert type(strategy).__name__ == "FSDPStrategy"
