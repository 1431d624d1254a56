"""Training dashboards: throughput, memory, gradient norms, gate statistics, learning rates.

Logged every ``every_n_steps`` optimizer steps (default: ``trainer.log_every_n_steps``) under ``perf/``,
``grad_norm/``, ``gate/`` and ``lr/``, so W&B (or CSV) gets them without extra work in the modules:

* ``perf/images_per_s``, ``perf/tokens_per_s`` (global over all ranks; tokens = pixels / patch_size², the
  backbone's patch tokens), ``perf/step_time_s``; ``perf/gpu_mem_alloc_gb``, ``perf/gpu_mem_peak_gb``,
  ``perf/gpu_mem_reserved_gb`` on CUDA.
* ``grad_norm/total`` and per top-level part of the network (``grad_norm/backbone``, ``grad_norm/adapter``),
  measured before clipping.
* ``gate/block<i>/mean`` and ``gate/block<i>/alpha``: per injection point, from ``net.gate_stats()``.
* ``lr/<optimizer>/<group>`` learning rates.

The work is only done on logging steps; other steps cost one ``time.perf_counter()``.
"""

from __future__ import annotations

import time

import lightning.pytorch as pl
import torch

from pid.lit.strategies import clean_name, fsdp_root, grad_square_sums
from pid.nn.pixel_dit import network_patch_size


def _part(name: str) -> str:
    """The top-level part of the network a parameter belongs to (``patch_blocks``, ``adapter``, …)."""
    parts = clean_name(name).split(".")
    return parts[1] if parts[0] == "net" and len(parts) > 2 else parts[0]


class TrainingMonitor(pl.Callback):
    def __init__(self, every_n_steps: int | None = None, grad_norms: bool = True, gates: bool = True,
                 memory: bool = True, learning_rates: bool = True):
        self.every_n_steps = every_n_steps
        self.grad_norms = grad_norms
        self.gates = gates
        self.memory = memory
        self.learning_rates = learning_rates
        self._t0: float | None = None
        self._images = 0
        self._tokens = 0
        self._steps = 0
        self._grad: dict[str, float] = {}
        self._last_step = -1
        self.last_metrics: dict[str, float] = {}

    def _every(self, trainer: pl.Trainer) -> int:
        return max(int(self.every_n_steps or trainer.log_every_n_steps or 1), 1)

    def _due(self, trainer: pl.Trainer) -> bool:
        # global_step counts optimizer steps; log on the batch that completes a multiple of the period
        return (trainer.global_step + 1) % self._every(trainer) == 0

    def on_train_start(self, trainer, pl_module) -> None:
        self._t0 = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._t0 is None:
            self._t0 = time.perf_counter()
            self._images = self._tokens = self._steps = 0
            if self.memory and torch.cuda.is_available() and pl_module.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not (self.grad_norms and self._due(trainer)):
            return
        # FSDP: each rank holds a shard of every gradient; every rank sums the same parts (sorted; a part
        # without a gradient here is a zero) so that the all-reduce lines up; parts still zero are dropped.
        fsdp = fsdp_root(trainer) is not None and torch.distributed.is_initialized()
        groups: dict[str, list[torch.nn.Parameter]] = {}
        for name, p in pl_module.named_parameters():
            if p.requires_grad if fsdp else p.grad is not None:
                groups.setdefault(_part(name), []).append(p)
        if fsdp:
            groups = dict(sorted(groups.items()))
        sq = grad_square_sums(trainer, groups, next(pl_module.parameters()).device)
        if fsdp:
            sq = {k: v for k, v in sq.items() if float(v) > 0}
        if sq:
            total = torch.stack(list(sq.values())).sum()
            self._grad = {f"grad_norm/{k}": float(v.sqrt()) for k, v in sq.items()}
            self._grad["grad_norm/total"] = float(total.sqrt())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        images = batch.get("image") if isinstance(batch, dict) else None
        if isinstance(images, torch.Tensor):
            b, _, h, w = images.shape
            self._images += b
            p = network_patch_size(pl_module)
            self._tokens += b * (h // p) * (w // p)
        self._steps += 1
        step = trainer.global_step  # already counts this batch's optimizer step
        if step % self._every(trainer) or step == self._last_step or self._t0 is None:
            return
        self._last_step = step
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        from pid.parallel.context import of_trainer

        cp = of_trainer(trainer)  # the ranks of a context-parallel group share their images
        world = trainer.world_size if cp is None else cp.dp_size
        metrics = {"perf/images_per_s": self._images * world / elapsed,
                   "perf/tokens_per_s": self._tokens * world / elapsed,
                   "perf/step_time_s": elapsed / max(self._steps, 1)}
        if self.memory and pl_module.device.type == "cuda":
            dev = pl_module.device
            metrics.update({"perf/gpu_mem_alloc_gb": torch.cuda.memory_allocated(dev) / 2**30,
                            "perf/gpu_mem_peak_gb": torch.cuda.max_memory_allocated(dev) / 2**30,
                            "perf/gpu_mem_reserved_gb": torch.cuda.memory_reserved(dev) / 2**30})
        metrics.update(self._grad)
        self._grad = {}
        net = getattr(pl_module, "net", None)
        if self.gates and hasattr(net, "gate_stats"):
            metrics.update(net.gate_stats())
        if self.learning_rates:
            for i, opt in enumerate(trainer.optimizers):
                for j, group in enumerate(opt.param_groups):
                    metrics[f"lr/opt{i}/group{j}"] = float(group["lr"])
        for lg in trainer.loggers:
            lg.log_metrics(metrics, step=trainer.global_step)
        self.last_metrics = metrics
        self._t0 = time.perf_counter()
        self._images = self._tokens = self._steps = 0
