"""Strategy builders for conf/trainer/*.yaml (what plain YAML cannot express: sets of classes)."""

from __future__ import annotations

import importlib
from typing import Iterable

import torch
from torch import nn


def _classes(names: Iterable[str]) -> set[type]:
    out = set()
    for name in names:
        module, _, cls = name.rpartition(".")
        out.add(getattr(importlib.import_module(module), cls))
    return out


def fsdp(block_classes: Iterable[str] = ("pid.nn.blocks.MMDiTBlock", "pid.nn.blocks.PiTBlock"),
         unit_classes: Iterable[str] = ("pid.nn.pid_net.PiDNet", "pid.nn.discriminator.FeatureDiscriminator"),
         activation_checkpointing: bool = True, sharding_strategy: str = "FULL_SHARD",
         state_dict_type: str = "full", cpu_offload: bool = False, allow_cpu: bool = False, **kwargs):
    """Lightning ``FSDPStrategy`` that wraps (and, with ``activation_checkpointing``, recomputes) each
    transformer block, and makes each network (``unit_classes``: PiD nets, the DMD2 discriminator) an FSDP
    unit of its own, so calling it outside the training forward (sampling, image grids) gathers its
    weights. ``state_dict_type: full`` keeps single-file checkpoints that load with
    ``torch.load(weights_only=True)`` and export like DDP ones; ``sharded`` saves a folder per checkpoint
    (faster at the paper size, but ``pid.api`` cannot read it directly). ``use_orig_params`` keeps the
    parameter names the EMA callback and the optimiser groups rely on.

    ``allow_cpu``: FSDP on CPU processes with gloo (``trainer.accelerator=cpu``), for tests and debugging
    without a GPU; Lightning's own FSDPStrategy accepts only CUDA."""
    blocks = _classes(block_classes)
    cls = _cpu_fsdp_strategy() if allow_cpu else _fsdp_strategy()
    return cls(
        auto_wrap_policy=blocks | _classes(unit_classes),
        activation_checkpointing_policy=blocks if activation_checkpointing else None,
        sharding_strategy=sharding_strategy,
        state_dict_type=state_dict_type,
        cpu_offload=cpu_offload,
        use_orig_params=True,
        **kwargs,
    )


def _fsdp_strategy():
    from lightning.pytorch.strategies import FSDPStrategy

    return FSDPStrategy


def _cpu_fsdp_strategy():
    import torch
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp import FullyShardedDataParallel

    class CPUFSDPStrategy(FSDPStrategy):
        """FSDPStrategy that also runs on CPU: the module is wrapped here with ``device_id=cpu`` (torch's FSDP
        needs it without an accelerator); Lightning then treats it as wrapped by the user."""

        def _setup_model(self, model):
            if self.root_device.type == "cpu" and not any(
                    isinstance(m, FullyShardedDataParallel) for m in model.modules()):
                model = FullyShardedDataParallel(
                    module=model, cpu_offload=self.cpu_offload, mixed_precision=self.mixed_precision_config,
                    sharding_strategy=self.sharding_strategy, device_id=torch.device("cpu"), **self.kwargs)
            return super()._setup_model(model)

    return CPUFSDPStrategy


# ---------------------------------------------------------------- helpers for code that runs under FSDP
_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def clean_name(name: str) -> str:
    """A parameter name without FSDP / activation-checkpointing / torch.compile wrapper segments."""
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def fsdp_root(trainer) -> nn.Module | None:
    """The FSDP-wrapped root module when the trainer shards with FSDP, else None."""
    if trainer is None:
        return None
    from lightning.pytorch.strategies import FSDPStrategy

    strategy = getattr(trainer, "strategy", None)
    return strategy.model if isinstance(strategy, FSDPStrategy) else None


def summon_full_params(root: nn.Module, writeback: bool):
    """All of ``root``'s parameters whole on every rank, inside the context (a collective)."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    return FSDP.summon_full_params(root, writeback=writeback, rank0_only=False, offload_to_cpu=False)


def grad_square_sums(trainer, groups: dict[str, list[nn.Parameter]], device) -> dict[str, torch.Tensor]:
    """Σ grad² per named group of parameters (parameters without a gradient count as zero).

    Under FSDP every rank holds a shard of each gradient: the sums are all-reduced in one collective, so
    every rank must pass the same group names in the same order (an empty group is a zero)."""
    sums = []
    for params in groups.values():
        total = torch.zeros((), dtype=torch.float32, device=device)
        for p in params:
            if p.grad is not None:
                g = p.grad.detach()
                g = g.to_local() if hasattr(g, "to_local") else g  # FSDP2 DTensor: the local shard
                total = total + g.float().square().sum()
        sums.append(total)
    if not sums:
        return {}
    vec = torch.stack(sums)
    if fsdp_root(trainer) is not None and torch.distributed.is_initialized():
        torch.distributed.all_reduce(vec)
    return dict(zip(groups, vec))


def finish_fsdp_backward(trainer) -> None:
    """Under FSDP, end a manual backward as FSDP's root would (reshard, reset every unit's state).

    FSDP queues that step from the pre-backward hook of the root's *output*; with manual optimisation the
    backward runs inside the root's forward (Lightning's training_step), so nothing queues it and the next
    checkpoint or forward finds units still in their backward state."""
    root = fsdp_root(trainer)
    if root is None:
        return
    from torch.distributed.fsdp._runtime_utils import _post_backward_final_callback

    _post_backward_final_callback(root, root)


def clip_grad_norm(trainer, name: str, params: list[nn.Parameter], max_norm: float | None, device) -> float:
    """Clip the gradients of ``params`` (one named group) to ``max_norm``; return their norm before clipping.

    ``max_norm`` None or 0: no clipping (the norm is still returned). Under FSDP each rank holds a shard of
    every gradient: the squares are summed over all ranks, a collective every rank takes part in (also one
    whose shard of the group is empty)."""
    max_norm = float("inf") if max_norm in (None, 0) else float(max_norm)
    if fsdp_root(trainer) is None:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm)) if params else 0.0
    total = float(grad_square_sums(trainer, {name: params}, device)[name].sqrt())
    if total > max_norm:
        for p in params:
            p.grad.mul_(max_norm / (total + 1e-6))
    return total
