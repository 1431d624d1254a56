"""Exponential moving average of the network's weights, as a Lightning callback.

Only ``pl_module.net`` is averaged (frozen encoders are never copied). The shadow weights are kept
in float32 on the module's device, swapped in for validation and sampling, stored in checkpoints
under ``checkpoint["ema"]`` and restored on resume. With ``warmup`` the effective decay is
min(decay, (1 + n) / (10 + n)) after n updates, so early averages are not dominated by the init.

Under FSDP (``use_orig_params``) each rank's parameters are views of its own shard, so each rank keeps
the shadow of its shard (the average is element-wise: no communication per update). Checkpoints and
exports need the whole average: :meth:`EMA.full_shadow` gathers it (all ranks must call it), and a
resumed run scatters the saved full shadow back into shards. Names are the unwrapped module's names.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import lightning.pytorch as pl
import torch

from pid.lit.strategies import clean_name, fsdp_root, summon_full_params


class EMA(pl.Callback):
    def __init__(self, decay: float = 0.9999, warmup: bool = True, update_every_n_steps: int = 1,
                 start_step: int = 0, swap_for_validation: bool = True):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.update_every_n_steps = update_every_n_steps
        self.start_step = start_step
        self.swap_for_validation = swap_for_validation
        self.shadow: dict[str, torch.Tensor] = {}
        self.num_updates = 0
        self._pending: dict[str, Any] | None = None
        self._swapped = False

    # ------------------------------------------------------------------ state
    @staticmethod
    def _tracked(pl_module: pl.LightningModule) -> Iterator[tuple[str, torch.Tensor]]:
        for name, p in pl_module.net.named_parameters():
            if p.requires_grad:
                yield clean_name(name), p

    def _init_shadow(self, pl_module: pl.LightningModule) -> None:
        self.shadow = {n: p.detach().float().clone() for n, p in self._tracked(pl_module)}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending is not None:
            self._load_full_shadow(trainer, pl_module, self._pending["shadow"])
            self.num_updates = int(self._pending["num_updates"])
            self._pending = None
        elif not self.shadow:
            self._init_shadow(pl_module)

    @torch.no_grad()
    def _load_full_shadow(self, trainer, pl_module, full: dict[str, torch.Tensor]) -> None:
        root = fsdp_root(trainer)
        if root is None:
            shapes = {n: p.shape for n, p in self._tracked(pl_module)}
            # reshape: checkpoints from before a parameter changed shape (a 0-d one became (1,))
            self.shadow = {k: v.to(pl_module.device).float().reshape(shapes.get(k, v.shape))
                           for k, v in full.items()}
            return
        # FSDP: write the full average into the parameters, keep each rank's shard of it, restore the weights.
        with summon_full_params(root, writeback=True):
            raw = {n: p.detach().clone() for n, p in self._tracked(pl_module)}
            for n, p in self._tracked(pl_module):
                p.copy_(full[n].to(p.device, p.dtype).reshape(p.shape))
        self._init_shadow(pl_module)
        with summon_full_params(root, writeback=True):
            for n, p in self._tracked(pl_module):
                p.copy_(raw[n])

    @torch.no_grad()
    def full_shadow(self, trainer: pl.Trainer | None,
                    pl_module: pl.LightningModule) -> dict[str, torch.Tensor]:
        """The shadow as whole tensors on the CPU.

        Under FSDP it is gathered from all ranks: call it on every rank.
        """
        root = fsdp_root(trainer)
        if root is None or not self.shadow:
            return {k: v.detach().cpu() for k, v in self.shadow.items()}
        self._swap(pl_module)  # this rank's shard of the average into the parameters …
        try:
            with summon_full_params(root, writeback=False):  # … gathered
                return {n: p.detach().float().cpu().clone() for n, p in self._tracked(pl_module)}
        finally:
            self._swap(pl_module)

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step < self.start_step or step % self.update_every_n_steps:
            return
        d = self.current_decay()
        for name, p in self._tracked(pl_module):
            self.shadow[name].lerp_(p.detach().float(), 1.0 - d)
        self.num_updates += 1

    # ------------------------------------------------------------------ swapping
    @torch.no_grad()
    def _swap(self, pl_module: pl.LightningModule) -> None:
        for name, p in self._tracked(pl_module):
            current = p.detach().clone()
            p.copy_(self.shadow[name].to(p.dtype))
            self.shadow[name].copy_(current.float())
        self._swapped = not self._swapped

    @contextlib.contextmanager
    def averaged(self, pl_module: pl.LightningModule):
        """Context in which ``pl_module.net`` holds the EMA weights."""
        if not self.shadow or self._swapped:
            yield
            return
        self._swap(pl_module)
        try:
            yield
        finally:
            self._swap(pl_module)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if self.swap_for_validation and self.shadow and not self._swapped and trainer.state.fn == "fit":
            self._swap(pl_module)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._swapped:
            self._swap(pl_module)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        shadow = self.full_shadow(trainer, pl_module)
        if self._swapped:
            # Saved during validation: the model holds the EMA weights and the shadow the raw ones.
            state = checkpoint["state_dict"]
            for name in shadow:
                state[f"net.{name}"], shadow[name] = shadow[name].to(state[f"net.{name}"].dtype), \
                    state[f"net.{name}"].float()
        checkpoint["ema"] = {"shadow": shadow, "num_updates": self.num_updates, "decay": self.decay}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if "ema" in checkpoint:
            self._pending = checkpoint["ema"]


def find_ema(trainer: pl.Trainer) -> EMA | None:
    return next((cb for cb in trainer.callbacks if isinstance(cb, EMA)), None)


@torch.no_grad()
def averaged_net_state(trainer: pl.Trainer | None, pl_module: pl.LightningModule,
                       ema: EMA | None = None) -> dict[str, torch.Tensor]:
    """``pl_module.net``'s state dict (EMA weights when ``ema`` is given) as whole CPU tensors with the
    unwrapped names; under FSDP gathered from all ranks (call it on every rank)."""
    net = pl_module.net
    root = fsdp_root(trainer)
    with ema.averaged(pl_module) if ema is not None else contextlib.nullcontext():
        if root is None:
            return {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        with summon_full_params(root, writeback=False):
            state = {clean_name(k): p.detach().cpu().clone() for k, p in net.named_parameters()}
    for mod_name, mod in net.named_modules():  # buffers are not sharded
        for b_name, buf in mod._buffers.items():
            if buf is not None and b_name not in mod._non_persistent_buffers_set:
                state[clean_name(f"{mod_name}.{b_name}" if mod_name else b_name)] = buf.detach().cpu().clone()
    return state
