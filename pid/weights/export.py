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


def write_export(
    path: str | Path,
    net_state: dict[str, torch.Tensor],
    config: dict,
    sr_scale: int,
    latent_state: dict[str, torch.Tensor] | None = None,
    ema: bool = False,
    identity: dict | None = None,
) -> Path:
    """Write ``net_state`` (project names), optional latent tensors and the run config as a PiD export.

    ``identity``: the model's fingerprint (:meth:`pid.identity.ModelIdentity.to_dict`), metadata key
    ``identity``."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in net_state.items()}
    tensors.update({f"latent.{k}": v.detach().cpu().contiguous() for k, v in (latent_state or {}).items()})
    meta = {
        "format": EXPORT_FORMAT,
        "config": json.dumps(config or {}),
        "sr_scale": str(sr_scale),
        "ema": str(bool(ema)),
    }
    if identity is not None:
        meta["identity"] = json.dumps(identity, sort_keys=True)
    tmp = _atomic(path)
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def release_state_dict(
    net_state: dict[str, torch.Tensor], dtype: torch.dtype = torch.bfloat16
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


def export_release(
    net_state: dict[str, torch.Tensor], path: str | Path, dtype: torch.dtype = torch.bfloat16
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


def release_preset_for(config: dict, kind: str, name: str) -> dict:
    """A release preset (``conf/releases/`` format) describing a network trained here, from its run config."""
    model = config["model"]
    net = dict(model["net"])
    sampling = dict(model.get("sampling") or {})
    if sampling.get("t_list"):
        sampling.setdefault("one_step_t", 1.0)
    latent = config.get("latent") or {}
    return {
        "release": name,
        "kind": kind,
        "latent": latent.get("name") or dict(latent),
        "sr_scale": int(config["sr_scale"]),
        "net": net,
        "sampling": sampling,
        "time": {k: v for k, v in (model.get("time") or {}).items() if k.startswith("shift")},
        "text": {
            "states": bool((config.get("text") or {}).get("_target_")),
            **{k: v for k, v in (config.get("text") or {}).items() if k in ("prefix", "max_length")},
        },
    }


def main(argv: list[str] | None = None) -> Path:
    """``python -m pid.weights.export SRC OUT``: a run's export / .ckpt → the released layout + its preset."""
    import argparse

    import yaml

    from pid.weights.formats import read_weights
    from pid.weights.load import choose_group

    parser = argparse.ArgumentParser(prog="python -m pid.weights.export", description=main.__doc__)
    parser.add_argument("src", help="pid_decoder.safetensors or a .ckpt of pid.train")
    parser.add_argument(
        "out", help="output .pth (e.g. model_ema_bf16.pth); the preset goes beside it (.yaml)"
    )
    parser.add_argument(
        "--dtype",
        default="bfloat16",
        choices=["bfloat16", "float32"],
        help="bfloat16 as the releases; float32 keeps the weights exact",
    )
    parser.add_argument("--weights", default="ema", choices=["ema", "raw"])
    args = parser.parse_args(argv)
    if Path(args.out).resolve() == Path(args.src).resolve():
        raise SystemExit(f"{args.out} is the file being exported: give another output path")
    wf = read_weights(args.src)
    if not wf.config:
        raise SystemExit(f"{args.src} carries no run config: only files written by pid.train can be exported")
    state = wf.groups[choose_group(wf, args.weights)]
    out = export_release(state, args.out, getattr(torch, args.dtype))
    kind = "student" if (wf.config["model"].get("sampling") or {}).get("t_list") else "teacher"
    preset = release_preset_for(wf.config, kind, Path(args.out).parent.name or Path(args.out).stem)
    out.with_suffix(".yaml").write_text(
        "# Written by python -m pid.weights.export\n" + yaml.safe_dump(preset, sort_keys=False)
    )
    print(f"wrote {out} ({len(state)} tensors, {args.dtype}) and its preset {out.with_suffix('.yaml')}")
    return out


if __name__ == "__main__":
    main()
