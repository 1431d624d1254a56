"""Start a network from pretrained weights: a PixelDiT prior, a PiD checkpoint or a safetensors export."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from pid.utils.errors import MissingWeightsError, PiDConfigError

log = logging.getLogger(__name__)

# Prefixes under which a network's weights appear in the files we read.
_PREFIXES = ("net.", "model.net.", "module.", "net_ema.", "model.")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or of a torch checkpoint (Lightning or plain), loaded weights-only."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "net"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise PiDConfigError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return obj


def strip_prefix(state: dict[str, torch.Tensor], names: set[str]) -> dict[str, torch.Tensor]:
    """Remove the first wrapper prefix that makes the keys match the network's own names."""
    if any(k in names for k in state):
        return state
    for prefix in _PREFIXES:
        stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if stripped and any(k in names for k in stripped):
            return stripped
    return state


def load_pretrained_net(net: nn.Module, path: str | Path, config_key: str = "model.init_from") -> None:
    """Load ``path`` into ``net``; adapter weights may be absent (a prior starts a teacher).

    Every backbone tensor must be found with the right shape; otherwise the error lists what differs.
    """
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise MissingWeightsError(
            "pretrained network", config_key, "a .safetensors, .ckpt or .pt file with the network's state dict",
            source="a PixelDiT-T2I checkpoint (stage-1, fine-tuned to 2K) or a checkpoint of `make train`",
            path=path)
    own = net.state_dict()
    state = strip_prefix(read_state_dict(path), set(own))
    missing = [k for k in own if k not in state and not k.startswith(("adapter.", "pit_gate."))]
    wrong = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if missing or wrong:
        raise PiDConfigError(
            f"{path} does not fit the configured network ({config_key}): {len(missing)} backbone tensors missing "
            f"(e.g. {missing[:3]}), {len(wrong)} with other shapes (e.g. {wrong[:3]}). Check that model.net "
            f"matches the checkpoint's size.")
    result = net.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    log.info("loaded %s into the network (%d tensors; not in file: %d adapter tensors)",
             path, len(own) - len(result.missing_keys), len(result.missing_keys))
