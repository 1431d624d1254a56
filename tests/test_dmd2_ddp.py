"""A 2-process DDP distillation on CPU (gloo): a few iterations of both phases, backward simulation, no
unused-parameter errors, no hang (hard timeout), and every rank drew the same rollout step each iteration.

The test runs this file as a script; Lightning's launcher starts the second rank by re-running it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _run(root: str, out: str, teacher: str) -> None:
    import torch

    sys.path.insert(0, str(HERE))
    from conftest import compose_train
    from test_dmd2_train import distill_overrides

    from pid.train import build

    torch.set_num_threads(1)
    cfg = compose_train(distill_overrides(
        Path(root), Path(out), "ddp", Path(teacher), "trainer.max_steps=4", "trainer.devices=2",
        "+trainer.strategy=ddp_find_unused_parameters_true", "model.student_input=backward_simulation",
        "callbacks.model_checkpoint.every_n_train_steps=1000", "trainer.enable_progress_bar=false"))
    dm, module, trainer = build(cfg)
    drawn = []
    student_x0 = module.student_x0

    def recording(*args, **kwargs):
        out = student_x0(*args, **kwargs)  # (x0, t) or, for the student's own update, (x0, t, x_t)
        drawn.append([int(module.global_step), float(out[1][0])])
        return out

    module.student_x0 = recording
    trainer.fit(module, datamodule=dm)
    digest = float(sum(p.double().sum() for p in module.net.parameters()))
    result = {"rank": trainer.global_rank, "world": trainer.world_size, "global_step": trainer.global_step,
              "drawn": drawn, "student_digest": digest,
              "metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}}
    Path(out, f"ddp_rank{trainer.global_rank}.json").write_text(json.dumps(result))


@pytest.mark.slow
def test_two_process_ddp_distillation_on_cpu(tiny_image_root, tmp_path):
    from test_dmd2_train import make_teacher

    teacher = make_teacher(tiny_image_root, tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent)}
    proc = subprocess.run([sys.executable, __file__, str(tiny_image_root), str(tmp_path), str(teacher)],
                          cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=240)
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, tail
    ranks = [json.loads((tmp_path / f"ddp_rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:
        assert r["world"] == 2 and r["global_step"] == 4
        assert len(r["drawn"]) == 4
    assert ranks[0]["drawn"] == ranks[1]["drawn"], "every rank drew the same backward-simulation step"
    assert ranks[0]["student_digest"] == ranks[1]["student_digest"], "gradients were averaged: same weights"
    for key in ("train/vsd", "train/dsm", "train/gan_d", "train/r1", "train/grad_norm/student"):
        assert key in ranks[0]["metrics"], key


if __name__ == "__main__":
    _run(*sys.argv[1:4])
