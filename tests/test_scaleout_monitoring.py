"""Dashboards and switches: throughput, grad norms, gate means/alpha and learning rates reach the logger;
gradient accumulation and the torch.compile switch train; W&B names/groups/tags come from the experiment."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import pytest
import torch

from conftest import compose_train, tiny_train_overrides


@pytest.mark.slow
def test_monitor_logs_throughput_grad_norms_gates_and_lr_with_accumulation_and_compile(
    tiny_image_root, tmp_path
):
    from pid.train import build

    cfg = compose_train(tiny_train_overrides(
        tiny_image_root, tmp_path, "trainer.max_steps=4", "trainer.accumulate_grad_batches=2",
        "trainer.log_every_n_steps=1", "++trainer.limit_val_batches=0", "compare=false",
        "callbacks.image_grid.every_n_steps=0", "callbacks.model_checkpoint.every_n_train_steps=100",
        "compile={enabled:true,backend:eager}"))
    dm, module, trainer = build(cfg)
    assert module.net._compiled_call_impl is not None, "compile=... compiled the network in place"
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 4
    assert trainer.fit_loop.epoch_loop.batch_progress.total.completed == 8, "2 batches per optimizer step"
    assert not any(k.startswith("net._orig_mod") for k in module.state_dict()), "parameter names unchanged"

    rows = list(csv.DictReader(open(next((tmp_path / "csv").rglob("metrics.csv")))))
    cols = set(rows[0])
    for key in ("perf/images_per_s", "perf/tokens_per_s", "grad_norm/total", "grad_norm/adapter",
                "lr/opt0/group0", "train/nonfinite_skipped"):
        assert key in cols, (key, sorted(cols))
    assert any(c.startswith("gate/block") and c.endswith("/alpha") for c in cols)
    assert any(c.startswith("gate/block") and c.endswith("/mean") for c in cols)
    monitor = next(cb for cb in trainer.callbacks if type(cb).__name__ == "TrainingMonitor")
    m = monitor.last_metrics
    tokens = (64 // module.net.patch_size) ** 2
    assert m["perf/images_per_s"] > 0
    assert m["perf/tokens_per_s"] == pytest.approx(m["perf/images_per_s"] * tokens)
    assert m["grad_norm/total"] > 0 and torch.isfinite(torch.tensor(m["grad_norm/total"]))


def test_wandb_names_groups_and_tags_come_from_the_experiment_and_the_sweep():
    from pid.utils.run_naming import naming

    cfg = compose_train(["experiment=quickstart", "paths.output_dir=/tmp/out"])
    single = SimpleNamespace(mode="RunMode.RUN", runtime=SimpleNamespace(choices={"experiment": "quickstart",
                                                                                  "trainer": "cpu"}))
    n = naming(cfg, single)
    assert n["name"] == "quickstart" and n["group"] == "quickstart"
    assert {"quickstart", "tiny", "trainer:cpu"} <= set(n["tags"])
    choices = {"experiment": "quickstart", "hparams_search": "grid"}
    sweep = SimpleNamespace(mode="RunMode.MULTIRUN",
                            runtime=SimpleNamespace(choices=choices),
                            job=SimpleNamespace(num=1, override_dirname="model.optimizer.lr=0.001"),
                            sweep=SimpleNamespace(dir="logs/quickstart/multiruns/2026-01-01_00-00-00"))
    n = naming(cfg, sweep)
    assert n["name"] == "quickstart/1:model.optimizer.lr=0.001"
    assert n["group"] == "quickstart-sweep-2026-01-01_00-00-00"
    assert {"sweep", "search:grid"} <= set(n["tags"])
