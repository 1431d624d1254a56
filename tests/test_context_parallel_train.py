"""Context-parallel training (``trainer.context_parallel=2``) on 2 CPU processes (gloo) against one process.

A DP 1 × CP 2 run of the tiny quickstart teacher, and of its DMD2 distillation, under DDP and under FSDP,
takes 5 steps with the same losses (every logged term, every step) and ends with the same weights as a
single-process run (DDP over one process, so both read the data in the DistributedSampler's order).
`python -m pid.decode --context-parallel 2` under torchrun writes the image of a one-process decode.

The test runs this file as a script under torchrun: one launch for the single-process reference, one for
the four CP runs (teacher and DMD2, DDP and FSDP, in one process group) and the CP decode after them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
STEPS = 5
RUNS = (("teacher", "ddp"), ("dmd2", "ddp"), ("teacher", "fsdp"), ("dmd2", "fsdp"))


def _overrides(root: Path, out: Path, kind: str, strategy: str, world: int, teacher: Path) -> list[str]:
    sys.path.insert(0, str(HERE))
    from conftest import tiny_train_overrides

    run = out / f"{kind}_{strategy}"
    extra = [f"trainer={strategy}", "trainer.accelerator=cpu", "trainer.precision=32-true",
             f"trainer.devices={world}", f"trainer.context_parallel={world}", f"trainer.max_steps={STEPS}",
             "++trainer.limit_val_batches=0", "trainer.enable_progress_bar=false",
             "callbacks.model_checkpoint.every_n_train_steps=1000", "callbacks.image_grid.every_n_steps=0",
             "compare=false", "resume=never", "trainer.log_every_n_steps=1", f"paths.output_dir={run}",
             f"latent.path={out}/latent.safetensors", "model.sampling.num_steps=2"]
    if strategy == "fsdp":
        extra.append("trainer.strategy.allow_cpu=true")
    if kind == "dmd2":
        extra += ["experiment=quickstart_dmd2", f"model.teacher_ckpt={teacher}", "model.student_every=2",
                  "model.gan.warmup_steps=2", "model.warmup_steps.student=2",
                  "++trainer.gradient_clip_val=null"]
    return [o for o in tiny_train_overrides(root, out, *extra) if not o.startswith("paths.output_dir")
            or o == f"paths.output_dir={run}"]


def _run(root: str, out: str, teacher: str, mode: str) -> None:
    """Every run of ``mode`` ("ref": one process, DDP only; "cp": two processes, CP 2) in this process."""
    import lightning.pytorch as pl

    sys.path.insert(0, str(HERE))
    from conftest import compose_train

    from pid.lit.ema import find_ema
    from pid.train import build

    class Record(pl.Callback):
        def __init__(self):
            self.steps, self.queries, self.active = [], [], False

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.active = True

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.active = False
            self.steps.append({k: float(v) for k, v in trainer.callback_metrics.items()
                               if k.startswith("train/") and v.numel() == 1})

    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    runs = RUNS if mode == "cp" else [r for r in RUNS if r[1] == "ddp"]
    for kind, strategy in runs:
        cfg = compose_train(_overrides(Path(root), Path(out), kind, strategy, world, Path(teacher)))
        dm, module, trainer = build(cfg)
        from pid.nn.blocks import MMDiTJointAttention

        record = Record()  # image tokens per attention call of the (student) network in training steps
        attn = next(m for m in module.net.modules() if isinstance(m, MMDiTJointAttention))

        def count(mod, args, out, rec=record):
            if rec.active:
                rec.queries.append(args[0].shape[1])

        attn.register_forward_hook(count)
        trainer.callbacks.append(record)
        trainer.fit(module, datamodule=dm)
        from pid.lit.ema import averaged_net_state

        state = averaged_net_state(trainer, module, find_ema(trainer))  # whole weights (a collective)
        cp = getattr(trainer.strategy, "context_parallel", None)
        result = {"rank": trainer.global_rank, "world": trainer.world_size, "steps": record.steps,
                  "strategy": type(trainer.strategy).__name__, "global_step": trainer.global_step,
                  "queries": sorted(set(record.queries)),
                  "cp": None if cp is None else [cp.size, cp.rank, cp.dp_size, cp.dp_rank],
                  "weights": {k: float(v.double().sum()) for k, v in state.items()},
                  "weights_abs": {k: float(v.double().abs().sum()) for k, v in state.items()}}
        name = f"{mode}_{kind}_{strategy}_rank{trainer.global_rank}.json"
        Path(out, name).write_text(json.dumps(result))
    from pid.decode import main

    # the decode CLI in the same process group (latent guidance, σ > 0, the file's sampler)
    main(["--ckpt", teacher, "--latent", str(Path(out, "z.safetensors")), "--sigma", "0.3", "--latent-cfg",
          "2", "--seed", "4", "--device", "cpu", "--out", str(Path(out, f"decode_{mode}.png")),
          "--context-parallel", str(world)])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(nproc: int, *args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{HERE.parent}{os.pathsep}{HERE}"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                           "--master_port", str(_free_port()), __file__, *args],
                          cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, "\n".join(ln for ln in (proc.stdout + proc.stderr).splitlines()
                                           if not ln.startswith("[rank1]"))[-6000:]


@pytest.fixture(scope="module")
def runs(tiny_image_root, tmp_path_factory) -> Path:
    sys.path.insert(0, str(HERE))
    from conftest import compose_train, tiny_train_overrides

    from pid.api import export_decoder
    from pid.train import build

    out = tmp_path_factory.mktemp("cp_train")
    teacher = out / "teacher" / "pid_decoder.safetensors"
    torch.manual_seed(0)
    _, module, _ = build(compose_train(tiny_train_overrides(tiny_image_root, out / "teacher",
                                                            f"latent.path={out}/latent.safetensors")))
    with torch.no_grad():  # off the zero-initialised output layer, so the student and critics all learn
        for p in module.net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    export_decoder(module, teacher)
    from safetensors.torch import save_file

    save_file({"latent": torch.randn(1, 16, 2, 3, generator=torch.Generator().manual_seed(1))},
              str(out / "z.safetensors"))
    for nproc, mode in ((1, "ref"), (2, "cp")):
        _torchrun(nproc, str(tiny_image_root), str(out), str(teacher), mode)
    return out


def _load(out: Path, name: str) -> dict:
    return json.loads((out / name).read_text())


@pytest.mark.slow
@pytest.mark.parametrize("kind,strategy", RUNS)
def test_cp2_run_equals_one_process(runs, kind, strategy):
    ref = _load(runs, f"ref_{kind}_ddp_rank0.json")
    ranks = [_load(runs, f"cp_{kind}_{strategy}_rank{r}.json") for r in (0, 1)]
    assert ref["world"] == 1 and ref["cp"] is None
    assert ref["queries"] == [64], "the 64 px crops of the 8 px-patch network: 8 x 8 patch tokens"
    for r, got in enumerate(ranks):
        assert got["world"] == 2 and got["cp"] == [2, r, 1, 0], "DP 1 x CP 2"
        assert got["strategy"].startswith("ContextParallel")
        assert got["queries"] == [32], "each rank ran the attention on its 4 of the 8 patch rows"
        assert got["global_step"] == ref["global_step"] == STEPS
        assert len(got["steps"]) == len(ref["steps"]) == STEPS
    keys = sorted(ref["steps"][-1])
    assert keys and ("train/loss" in keys if kind == "teacher" else {"train/vsd", "train/dsm"} <= set(keys))
    # The teacher's losses come out bit-equal. DMD2's critic terms (R1 and the discriminator's gradient norm)
    # differentiate through gathered features, whose gradients are summed in another order: float32
    # rounding, ~1e-6 on the losses and up to 4e-5 relative on a gradient norm of ~10 by step 5.
    tol = dict(rel=1e-5, abs=1e-6) if kind == "teacher" else dict(rel=1e-4, abs=1e-5)
    worst = worst_abs = 0.0
    for step, (want, a, b) in enumerate(zip(ref["steps"], ranks[0]["steps"], ranks[1]["steps"])):
        assert want.keys() == a.keys() == b.keys(), step
        for k, v in want.items():
            assert a[k] == pytest.approx(v, **tol), (step, k)
            assert b[k] == pytest.approx(v, **tol), (step, k)
            worst = max(worst, abs(a[k] - v) / max(abs(v), 1e-12))
            worst_abs = max(worst_abs, abs(a[k] - v), abs(b[k] - v))
    assert ranks[0]["weights"] == ranks[1]["weights"], "both CP ranks hold the same weights"
    assert ref["weights"].keys() == ranks[0]["weights"].keys()
    for k, v in ref["weights"].items():
        assert ranks[0]["weights"][k] == pytest.approx(v, rel=1e-4, abs=1e-5 * (1 + ref["weights_abs"][k])), k
    print(f"{kind} {strategy}: {len(keys)} logged terms x {STEPS} steps, max difference {worst_abs:.1e} "
          f"(relative {worst:.1e})")


if __name__ == "__main__":
    _run(*sys.argv[1:5])


@pytest.mark.slow
def test_decode_cli_under_torchrun_equals_one_process(runs):
    """`torchrun --nproc_per_node 2 -m pid.decode --context-parallel 2` (here: its ``main`` in the CP run's
    process group) writes the image of a one-process `python -m pid.decode`."""
    import numpy as np
    from PIL import Image

    cp, one = (np.asarray(Image.open(runs / f"decode_{m}.png")).astype(int) for m in ("cp", "ref"))
    assert cp.shape == one.shape == (64, 96, 3)
    assert one.std() > 10, "a real image, not a constant"
    diff = np.abs(cp - one)
    print(f"decode CLI: CP=2 vs one process, 8-bit max |Δ| {diff.max()}, mean {diff.mean():.4f}")
    assert diff.max() <= 1 and diff.mean() < 0.01, (diff.max(), diff.mean())  # 8-bit rounding at most
