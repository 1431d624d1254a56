"""Write weights: the project's decoder export and the official release layout.

``write_export`` writes ``pid_decoder.safetensors`` (network + small latents + the run config), which
:func:`pid.api.load_decoder` reads back. ``export_release`` writes a trained network as NVIDIA's
``model_ema_bf16.pth``: a flat ``{"net.<official name>": bfloat16 tensor}`` dict with 0-d ``log_alpha``,
so the official inference code, ComfyUI and InvokeAI nodes load models trained here; reading it back
through :func:`pid.weights.load_weights` gives the same tensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pid.weights import official
from pid.weights.formats import EXPORT_FORMAT


def _atomic(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(path.name + ".tmp")


def write_export(path: str | Path, net_state: dict[str, torch.Tensor], config: dict, sr_scale: int,
                 latent_state: dict[str, torch.Tensor] | None = None, ema: bool = False) -> Path:
    """Write ``net_state`` (project names), optional latent tensors and the run config as a PiD export."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in net_state.items()}
    tensors.update({f"latent.{k}": v.detach().cpu().contiguous() for k, v in (latent_state or {}).items()})
    meta = {"format": EXPORT_FORMAT, "config": json.dumps(config or {}), "sr_scale": str(sr_scale),
            "ema": str(bool(ema))}
    tmp = _atomic(path)
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def release_state_dict(net_state: dict[str, torch.Tensor], dtype: torch.dtype = torch.bfloat16
                       ) -> dict[str, torch.Tensor]:
    """Project-named network tensors → the released layout (``net.`` + official names, 0-d log_alpha)."""
    out = {}
    for name, value in net_state.items():
        value = value.detach().cpu()
        if name.endswith("log_alpha"):
            value = value.reshape(())
        if value.is_floating_point():
            value = value.to(dtype)
        out[f"net.{official.to_official_name(name)}"] = value.contiguous()
    return out


def export_release(net_state: dict[str, torch.Tensor], path: str | Path, dtype: torch.dtype = torch.bfloat16
                   ) -> Path:
    """Write ``net_state`` (e.g. the EMA weights of a trained teacher or student) as ``model_ema_bf16.pth``.

    ``dtype``: bfloat16 as the releases (float32 keeps the weights exact). The file holds plain tensors only
    (``torch.load(weights_only=True)`` reads it).
    """
    path = Path(path)
    tmp = _atomic(path)
    torch.save(release_state_dict(net_state, dtype), str(tmp))
    tmp.replace(path)
    return path
