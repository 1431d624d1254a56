"""StepProgress: progress of the whole run (steps against max_steps), as lines when stdout is not a
terminal."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from pid.lit.progress import StepProgress


def test_progress_lines_every_period_with_eta_when_stdout_is_not_a_terminal(capsys, monkeypatch):
    clock = iter([0.0, 10.0, 31.0, 31.0, 40.0, 65.0, 65.0, 66.0])
    monkeypatch.setattr("pid.lit.progress.time.monotonic", lambda: next(clock))
    trainer = SimpleNamespace(global_step=0, max_steps=100, is_global_zero=True, sanity_checking=False,
                              precision="32-true", callback_metrics={"train/loss": torch.tensor(0.5)})
    module = SimpleNamespace(device=torch.device("cpu"))
    cb = StepProgress(every_s=30, bar="never")
    cb._trainer = trainer
    cb.on_train_start(trainer, module)
    for step in (10, 30, 40, 60):  # at t = 10, 31, 40, 65 s
        trainer.global_step = step
        cb.on_train_batch_end(trainer, module, None, None, step)
    trainer.global_step = 100
    cb.on_train_end(trainer, module)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "step 30/100 (30%) | 1.03 s/step | elapsed 0:31 | ETA 1:12 | train/loss 0.5"
    assert lines[1].startswith("step 60/100 (60%) | 1.08 s/step | elapsed 1:05 | ETA 0:43")
    assert lines[2].startswith("step 100/100 (100%)") and lines[2].endswith("| done")
    assert len(lines) == 3


def test_a_run_that_ends_before_max_steps_says_stopped_not_done(capsys):
    """A preempted or signalled run ends short of max_steps: its last line must not claim it is done."""
    trainer = SimpleNamespace(global_step=0, max_steps=100, is_global_zero=True, sanity_checking=False,
                              precision="32-true", callback_metrics={})
    module = SimpleNamespace(device=torch.device("cpu"))
    cb = StepProgress(every_s=30, bar="never")
    cb._trainer = trainer
    cb.on_train_start(trainer, module)
    trainer.global_step = 23
    cb.on_train_end(trainer, module)
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("step 23/100 (23%)") and last.endswith("| stopped"), last
