"""A callback the scale-out tests add from the command line.

Added with ``+callbacks.probe._target_=scaleout_probe.Probe``, it records, as JSON lines, the state each
run starts from and the samples each rank trains on.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning.pytorch as pl
import torch


def optimizer_digest(state: dict) -> list:
    """[step, Σexp_avg, Σexp_avg_sq] per parameter of an Adam(W) state dict's ``state``, in key order."""
    out = []
    for k in sorted(state, key=int):
        s = state[k]
        out.append([float(s["step"]), float(s["exp_avg"].double().sum()),
                    float(s["exp_avg_sq"].double().sum())])
    return out


def ema_digest(shadow: dict) -> list:
    return [[k, float(v.double().sum())] for k, v in sorted(shadow.items())]


class Probe(pl.Callback):
    def __init__(self, out: str, sleep: float = 0.0):
        self.out = Path(out)
        self.sleep = sleep

    def _write(self, trainer, record: dict) -> None:
        record["rank"] = trainer.global_rank
        path = self.out.with_name(f"{self.out.stem}_rank{trainer.global_rank}{self.out.suffix}")
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def on_train_start(self, trainer, pl_module) -> None:
        from pid.lit.ema import find_ema

        ema = find_ema(trainer)
        self._write(trainer, {
            "event": "start", "step": trainer.global_step, "world": trainer.world_size,
            "optimizer": optimizer_digest(trainer.optimizers[0].state_dict()["state"]),
            "ema": ema_digest(ema.shadow) if ema else None, "ema_updates": ema.num_updates if ema else None,
            "output_dir": trainer.default_root_dir})
        if trainer.global_rank == 0:  # the full state, for exact comparisons
            n = len(list(self.out.parent.glob(f"{self.out.stem}_start*.pt")))
            torch.save({"optimizer": trainer.optimizers[0].state_dict()["state"],
                        "ema": {k: v.cpu() for k, v in ema.shadow.items()} if ema else None},
                       self.out.with_name(f"{self.out.stem}_start{n}.pt"))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        keys = list(batch.get("key", [])) if isinstance(batch, dict) else []
        self._write(trainer, {"event": "batch", "step": trainer.global_step, "keys": keys})
        if self.sleep:
            time.sleep(self.sleep)

    def on_train_end(self, trainer, pl_module) -> None:
        self._write(trainer, {"event": "end", "step": trainer.global_step,
                              "digest": float(sum(p.double().sum() for p in pl_module.net.parameters()))})
