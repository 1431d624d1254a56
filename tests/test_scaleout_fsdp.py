"""FSDP on 2 CPU processes (gloo).

1. The EMA alone: each rank averages its own shard, and the gathered average — what checkpoints and the
   export get — equals the EMA of the same training without sharding; a saved full shadow is scattered
   back into shards on resume without touching the weights. The module is wrapped as Lightning wraps it
   (the LightningModule-like holder is the root, every MM-DiT / PiT block its own unit with activation
   checkpointing, ``use_orig_params=True``).
2. `pid.train` with ``trainer=fsdp`` (``trainer.strategy.allow_cpu=true``: torch's FSDP needs
   ``device_id=cpu`` there, which Lightning's strategy does not pass) against the same run with
   ``trainer=ddp``: gradient clipping, checkpoints, image grids and the export all work, and the exported
   EMA weights and the checkpoints agree.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

HERE = Path(__file__).resolve().parent
STEPS, LR, DECAY = 3, 0.05, 0.5


class _Holder(nn.Module):
    """Stands in for the LightningModule: the EMA reads ``.net`` and ``.device``."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    @property
    def device(self):
        return torch.device("cpu")

    def forward(self, x, t, cond):
        return self.net(x, t, **cond)


def _tiny_net(image_root: str, out: str):
    sys.path.insert(0, str(HERE))
    from conftest import compose_train, tiny_train_overrides
    from hydra.utils import instantiate

    cfg = compose_train(tiny_train_overrides(Path(image_root), Path(out)))
    torch.manual_seed(0)
    return instantiate(cfg.model.net)


def _batch(step: int, rank: int, n: int = 2):
    g = torch.Generator().manual_seed(1000 * step + rank)
    x = torch.randn(n, 3, 64, 64, generator=g)
    cond = {"latent": torch.randn(n, 16, 2, 2, generator=g), "sigma": torch.zeros(n)}
    return x, torch.rand(n, generator=g), cond


def _train(module, forward, ema, trainer, rank: int, world: int):
    opt = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=LR)
    for step in range(1, STEPS + 1):
        # each rank its own half of the global batch; the unsharded reference sees both halves
        parts = [_batch(step, r) for r in ([rank] if world > 1 else [0, 1])]
        x = torch.cat([p[0] for p in parts])
        t = torch.cat([p[1] for p in parts])
        cond = {k: torch.cat([p[2][k] for p in parts]) for k in parts[0][2]}
        opt.zero_grad()
        # the final layer starts at zero: a target moves it
        (forward(x, t, cond) - x).square().mean().backward()
        opt.step()
        trainer.global_step = step
        ema.on_train_batch_end(trainer, module, None, None, 0)


def _worker(rank: int, world: int, port: int, image_root: str, out: str):
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from pid.lit.ema import EMA, averaged_net_state
    from pid.nn.blocks import MMDiTBlock, PiTBlock

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        holder = _Holder(_tiny_net(image_root, out))
        blocks = {MMDiTBlock, PiTBlock}
        root = FSDP(holder, auto_wrap_policy=ModuleWrapPolicy(blocks), use_orig_params=True,
                    device_id=torch.device("cpu"))
        apply_activation_checkpointing(root, check_fn=lambda m: isinstance(m, tuple(blocks)))
        strategy = FSDPStrategy()
        strategy.model = root
        trainer = SimpleNamespace(strategy=strategy, global_step=0)
        ema = EMA(decay=DECAY, warmup=False)
        ema.on_fit_start(trainer, holder)
        _train(holder, root, ema, trainer, rank, world)

        shadow = ema.full_shadow(trainer, holder)  # collective
        export = averaged_net_state(trainer, holder, ema)  # collective
        raw = averaged_net_state(trainer, holder, None)

        resumed = EMA(decay=DECAY, warmup=False)
        resumed.on_load_checkpoint(trainer, holder, {"ema": {"shadow": shadow, "num_updates": STEPS}})
        resumed.on_fit_start(trainer, holder)  # scatter the full shadow into this rank's shards
        again = resumed.full_shadow(trainer, holder)
        raw_after = averaged_net_state(trainer, holder, None)
        local = {n: tuple(v.shape) for n, v in ema.shadow.items()}
        if rank == 0:
            torch.save({"shadow": shadow, "export": export, "raw": raw, "again": again,
                        "raw_after": raw_after, "local_shapes": local}, Path(out) / "fsdp.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_fsdp_ema_gathers_whole_and_matches_unsharded_training(tiny_image_root, tmp_path):
    from pid.lit.ema import EMA, averaged_net_state

    mp.start_processes(_worker, args=(2, _free_port(), str(tiny_image_root), str(tmp_path)), nprocs=2,
                       start_method="spawn")
    got = torch.load(tmp_path / "fsdp.pt", weights_only=True)

    holder = _Holder(_tiny_net(str(tiny_image_root), str(tmp_path)))  # the same init, unsharded
    trainer = SimpleNamespace(global_step=0)
    ema = EMA(decay=DECAY, warmup=False)
    ema.on_fit_start(trainer, holder)
    _train(holder, holder, ema, trainer, 0, 1)
    want_shadow, want_export = ema.full_shadow(None, holder), averaged_net_state(None, holder, ema)

    assert any(len(s) == 1 and s != tuple(want_shadow[n].shape) for n, s in got["local_shapes"].items()), \
        "rank 0 really held shards (flat views) of the parameters"
    assert got["shadow"].keys() == want_shadow.keys()
    for n, v in want_shadow.items():
        torch.testing.assert_close(got["shadow"][n], v, atol=2e-5, rtol=1e-4, msg=n)
        torch.testing.assert_close(got["again"][n], got["shadow"][n], atol=0, rtol=0, msg=n)  # resume: exact
    assert got["export"].keys() == want_export.keys() == holder.net.state_dict().keys()
    for n, v in want_export.items():
        torch.testing.assert_close(got["export"][n], v, atol=2e-5, rtol=1e-4, msg=n)
    for n, v in got["raw"].items():
        torch.testing.assert_close(got["raw_after"][n], v, atol=0, rtol=0, msg=n)  # weights untouched
    moved = [n for n in want_shadow if not torch.equal(got["shadow"][n], got["raw"][n].float())]
    assert moved, "after 3 steps at decay 0.5 the average differs from the weights"


def _train_run(image_root: str, out: str, trainer: str, teacher: str | None = None) -> None:
    """`pid.train` on 2 CPU processes: the quickstart teacher, or with ``teacher`` its DMD2 distillation."""
    sys.path.insert(0, str(HERE))
    from conftest import compose_train, tiny_train_overrides

    from pid.train import train

    torch.set_num_threads(1)
    extra = ["trainer.strategy.allow_cpu=true"] if trainer == "fsdp" else []
    if teacher:
        extra += ["experiment=quickstart_dmd2", f"model.teacher_ckpt={teacher}", "model.student_every=2",
                  "model.gan.warmup_steps=2", "model.warmup_steps.student=2",
                  "++trainer.gradient_clip_val=null"]
    train(compose_train(tiny_train_overrides(
        Path(image_root), Path(out), f"trainer={trainer}", "trainer.accelerator=cpu", *extra,
        "trainer.precision=32-true", "trainer.devices=2", "trainer.max_steps=4",
        "++trainer.limit_val_batches=0",
        "trainer.enable_progress_bar=false", "callbacks.model_checkpoint.every_n_train_steps=2",
        "callbacks.image_grid.every_n_steps=2", "callbacks.ema.decay=0.5", "compare=false", "resume=never")))


def _launch_runs(image_root, tmp_path: Path, *extra: str) -> None:
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{HERE.parent}{os.pathsep}{HERE}"}
    for run in ("ddp", "fsdp"):
        proc = subprocess.run([sys.executable, __file__, str(image_root), str(tmp_path / run), run, *extra],
                              cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, "\n".join(ln for ln in (proc.stdout + proc.stderr).splitlines()
                                               if not ln.startswith("[rank1]"))[-5000:]


def _assert_runs_agree(tmp_path: Path, parts: tuple[str, ...]) -> list[dict]:
    """Exports and step-4 checkpoints of the DDP and FSDP runs agree and ``parts`` trained.

    Returns both checkpoints.
    """
    from safetensors.torch import load_file

    ddp, fsdp = (load_file(str(tmp_path / run / "pid_decoder.safetensors")) for run in ("ddp", "fsdp"))
    assert ddp.keys() == fsdp.keys()
    for k, v in ddp.items():
        torch.testing.assert_close(fsdp[k], v, atol=2e-6, rtol=1e-5, msg=k)
    ckpts = [torch.load(tmp_path / run / "checkpoints" / "step_0000004.ckpt", map_location="cpu",
                        weights_only=True)
             for run in ("ddp", "fsdp")]
    a, b = (c["state_dict"] for c in ckpts)
    assert a.keys() == b.keys()
    for k, v in a.items():
        torch.testing.assert_close(b[k], v, atol=2e-6, rtol=1e-5, msg=k)
    first = torch.load(tmp_path / "fsdp" / "checkpoints" / "step_0000002.ckpt", map_location="cpu",
                       weights_only=True)["state_dict"]
    for part in parts:  # every trained network took steps between the two checkpoints
        assert any(not torch.equal(first[k], b[k]) for k in b if k.startswith(part + ".")), part
    assert ckpts[1]["global_step"] == 4
    assert len(ckpts[1]["optimizer_states"]) == len(ckpts[0]["optimizer_states"])
    return ckpts


@pytest.mark.slow
def test_pid_train_under_fsdp_matches_ddp(tiny_image_root, tmp_path):
    _launch_runs(tiny_image_root, tmp_path)
    ckpts = _assert_runs_agree(tmp_path, ("net",))
    a, b = (c["ema"]["shadow"] for c in ckpts)
    assert a.keys() == b.keys() and len(a) > 10
    for k, v in a.items():
        torch.testing.assert_close(b[k], v, atol=2e-6, rtol=1e-5, msg=k)  # the whole average, not a shard
    assert (tmp_path / "fsdp" / "grids" / "step_0000004.png").is_file()


@pytest.mark.slow
def test_dmd2_under_fsdp_matches_ddp(tiny_image_root, tmp_path):
    """Manual optimisation of three networks (student, fake score, discriminator) under FSDP."""
    sys.path.insert(0, str(HERE))
    from conftest import compose_train, tiny_train_overrides

    from pid.api import export_decoder
    from pid.train import build

    teacher = tmp_path / "teacher" / "pid_decoder.safetensors"
    _, module, _ = build(compose_train(tiny_train_overrides(tiny_image_root, tmp_path / "teacher")))
    export_decoder(module, teacher)  # a random tiny teacher: equality, not quality, is checked
    _launch_runs(tiny_image_root, tmp_path, str(teacher))
    _assert_runs_agree(tmp_path, ("net", "fake_score", "discriminator"))


if __name__ == "__main__":
    _train_run(*sys.argv[1:5])
