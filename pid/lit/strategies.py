"""Strategy builders for conf/trainer/*.yaml (what plain YAML cannot express: sets of classes)."""

from __future__ import annotations

import importlib
from typing import Iterable


def _classes(names: Iterable[str]) -> set[type]:
    out = set()
    for name in names:
        module, _, cls = name.rpartition(".")
        out.add(getattr(importlib.import_module(module), cls))
    return out


def fsdp(block_classes: Iterable[str] = ("pid.nn.blocks.MMDiTBlock", "pid.nn.blocks.PiTBlock"),
         activation_checkpointing: bool = True, sharding_strategy: str = "FULL_SHARD",
         state_dict_type: str = "full", cpu_offload: bool = False, **kwargs):
    """Lightning ``FSDPStrategy`` that wraps (and, with ``activation_checkpointing``, recomputes) each
    transformer block. ``state_dict_type: full`` keeps single-file checkpoints that load with
    ``torch.load(weights_only=True)`` and export like DDP ones; ``sharded`` saves a folder per checkpoint
    (faster at the paper size, but ``pid.api`` cannot read it directly). ``use_orig_params`` keeps the
    parameter names the EMA callback and the optimiser groups rely on."""
    from lightning.pytorch.strategies import FSDPStrategy

    blocks = _classes(block_classes)
    return FSDPStrategy(
        auto_wrap_policy=blocks,
        activation_checkpointing_policy=blocks if activation_checkpointing else None,
        sharding_strategy=sharding_strategy,
        state_dict_type=state_dict_type,
        cpu_offload=cpu_offload,
        use_orig_params=True,
        **kwargs,
    )
