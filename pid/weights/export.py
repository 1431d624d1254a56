"""Write weights: the project's decoder export and the official release layout.

``write_export`` writes ``pid_decoder.safetensors`` (network + small latents + the run config), which
:func:`pid.api.load_decoder` reads back. ``export_release`` writes a trained network as NVIDIA's
``model_ema_bf16.pth``: a flat ``{"net.<official name>": bfloat16 tensor}`` dict with 0-d ``log_alpha``;
reading it back through :func:`pid.weights.load_weights` gives the same tensors. :func:`export_model` (the
``python -m pid.weights.export`` / ``convert`` commands) writes a model for one target — NVIDIA's code,
ComfyUI, InvokeAI or pid — after checking it against that target's contract (:mod:`pid.weights.targets`:
which models each can run correctly), with its preset beside it.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from pid.utils.errors import PiDConfigError
from pid.weights import official
from pid.weights.formats import EXPORT_FORMAT, PRESET_KEY, WeightsFile, join_adaln, split_adaln
from pid.weights.release import Release
from pid.weights.targets import TARGETS, ModelFacts, Target, Verdict, check, get_target

#: safetensors metadata ``format`` of files written for a target (the NVIDIA-named tensors + the preset)
RELEASE_FORMAT = "pid-release-1"


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
        value = value.detach() if value.device.type == "meta" else value.detach().cpu()  # meta: key sets
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


# ------------------------------------------------------------------------------- export to a target
@dataclass
class Exported:
    """What :func:`export_model` wrote: the weights file, its preset beside it, the embedded latent's file
    (when the model's latent space travels with it) and the target's verdict (warnings said)."""

    path: Path
    preset: Path | None
    latent: Path | None
    verdict: Verdict
    num_tensors: int


def _kind(config: dict) -> str:
    if not (config.get("model") or {}).get("net", {}).get("adapter"):
        return "prior"
    return "student" if (config["model"].get("sampling") or {}).get("t_list") else "teacher"


def _preset_dict(rel: Release) -> dict:
    return {"release": rel.release, "kind": rel.kind, "latent": rel.latent, "sr_scale": rel.sr_scale,
            "net": dict(rel.net), "sampling": dict(rel.sampling), "time": dict(rel.time),
            "text": dict(rel.text)}


def model_of(wf: WeightsFile, release: str | Path | Release | None = None, weights: str = "ema",
             option: str = "--release") -> tuple[dict[str, torch.Tensor], dict | None, str]:
    """(network tensors with project names, the preset describing them or None, where it came from).

    The preset: ``release`` when given; else a file written by ``pid.train`` (its run config); else the
    preset beside or inside the file (:func:`pid.weights.release.find_preset`); else None (an official file:
    its tensors alone are checked). ``option`` names the way to give one in messages.
    """
    from pid.api import net_config_for_weights
    from pid.weights.load import choose_group
    from pid.weights.release import find_preset, load_release

    state = dict(wf.groups[choose_group(wf, weights)])
    if release is not None:
        rel = load_release(release)
        return state, _preset_dict(rel), f"{option} {rel.path}"
    if wf.config:
        preset = release_preset_for(wf.config, _kind(wf.config), wf.path.stem)
        preset["net"] = net_config_for_weights(preset["net"], state)
        return state, preset, f"the run config in {wf.path}"
    found = find_preset(wf.path, wf.meta)
    if found is not None:
        return state, _preset_dict(found[0]), found[1]
    return state, None, f"no preset ({option} names one)"


def target_tensors(state: dict[str, torch.Tensor], target: Target, dtype: torch.dtype,
                   split: bool = False) -> dict[str, torch.Tensor]:
    """Project-named network tensors → the file's tensors for ``target``: ``net.`` + NVIDIA names, 0-d
    ``log_alpha``, floats in ``dtype``; the teacher-only aux RGB head dropped where the target has no use
    for it; ``split``: the pixel blocks' adaLN as ComfyUI splits it (ComfyUI loads both)."""
    if not target.aux_head:
        state = {k: v for k, v in state.items() if not k.startswith("adapter.aux_rgb_head.")}
    out = release_state_dict(state, dtype)
    return split_adaln(out) if split else out


def facts_for(tensors: dict[str, torch.Tensor], preset: dict | None, source: str = "") -> ModelFacts:
    """What a target's contract is checked against (:class:`pid.weights.targets.ModelFacts`): the file's
    tensors (``net.`` + NVIDIA names, as :func:`target_tensors` gives them; split adaLN joined) and the
    preset describing the model (None: the tensors alone)."""
    joined = join_adaln(tensors)
    preset = preset or {}
    return ModelFacts(
        shapes={k.removeprefix("net."): tuple(v.shape) for k, v in joined.items()},
        net=preset.get("net"), kind=preset.get("kind", "student"),
        uses_text=bool((preset.get("text") or {}).get("states", True)),
        sampling=preset.get("sampling") or {}, latent=preset.get("latent"), source=source)


def _latent_file(wf: WeightsFile, preset: dict, out: Path) -> Path | None:
    """Write the small embedded latent a file carries (``latent.*``) beside ``out``; None when it has none."""
    if not wf.groups.get("latent") or not isinstance(preset.get("latent"), dict):
        return None
    from hydra.utils import instantiate

    cfg = {**preset["latent"], "path": str(out.with_name(out.stem + ".latent.missing"))}
    latent = instantiate(cfg)
    latent.load_state_dict(wf.groups["latent"], strict=True)
    if not hasattr(latent, "save"):
        raise PiDConfigError(f"{wf.path}: its latent space ({type(latent).__name__}) carries tensors but "
                             "cannot be saved to a file; export with --target pid to a .safetensors file")
    return latent.save(out.with_name(out.stem + ".latent.safetensors"))


def preset_and_metadata(preset: dict | None, out: Path, target: Target, latent_file: Path | None,
                        wf: WeightsFile) -> tuple[dict | None, dict[str, str]]:
    """The preset written beside ``out`` (and, for ``.safetensors``, into its metadata) and the file's
    safetensors metadata: the one place both are made.

    Paths in the preset are relative to ``out``'s folder: the embedded latent's file, or a relative
    ``latent.path`` of the run (relative to the folder it ran in) rewritten to point from ``out``.
    """
    import copy
    import os

    metadata = {"format": RELEASE_FORMAT, "pid.target": target.name}
    if preset is None:
        return None, metadata
    preset = copy.deepcopy(preset)
    preset["release"] = out.stem if preset.get("release") in (None, wf.path.stem) else preset["release"]
    latent = preset.get("latent")
    if isinstance(latent, dict) and latent.get("path"):
        where = latent_file or Path(str(latent["path"])).expanduser()
        if latent_file is not None or (not where.is_absolute() and where.exists()):
            latent["path"] = os.path.relpath(where.resolve(), out.parent.resolve())
    from pid.identity import META_KEY, read_identity

    identity = read_identity(wf)  # the source's fingerprint (pid.identity), carried on where it has one
    if identity is not None:
        preset["identity"] = identity.to_dict()
        metadata[META_KEY] = json.dumps(preset["identity"], sort_keys=True)
    metadata[PRESET_KEY] = json.dumps(preset)
    return preset, metadata


def export_model(src: str | Path | WeightsFile, out: str | Path, target: str = "official", *,
                 dtype: str | torch.dtype = torch.bfloat16, weights: str = "ema",
                 release: str | Path | Release | None = None, split: bool = False,
                 option: str = "--target", release_option: str = "--release") -> Exported:
    """Write the model in ``src`` for ``target`` (:mod:`pid.weights.targets`) at ``out``, with its preset.

    Args:
        src: any file :func:`pid.weights.read_weights` reads: a run's export or ``.ckpt`` (their run config
            describes the model), a released / converted file (its preset beside or inside, or ``release``),
            a full ``model.pth`` (the EMA weights unless ``weights="raw"``), a ComfyUI file.
        out: ``.pth`` (a flat ``torch.save`` dict, NVIDIA's layout) or ``.safetensors`` (the same tensors; the
            preset also in the metadata). ``target="pid"`` with ``.safetensors`` writes pid's own export
            (network, embedded latent and run config) when ``src`` carries a run config.
        target: "official" (default), "comfyui", "invokeai" or "pid".
        dtype: bfloat16 as the releases; float32 keeps the weights exact.
        split: write the pixel blocks' adaLN split as ComfyUI holds it internally (``comfyui`` only).
        option, release_option: how the caller names the target and the preset (``--target`` on the command
            line, ``target=`` in Python), used in messages.

    The preset goes beside the file (``<stem>.yaml``), with paths relative to it; an embedded latent's
    tensors go beside as ``<stem>.latent.safetensors``.

    Raises:
        ContractError: the target cannot run the model correctly (each reason, the setting and the ways on).
        PiDConfigError: an unknown target, an output suffix the target does not load, ``out`` = ``src``.
    """
    import logging

    import yaml

    from pid.weights.formats import read_weights

    log = logging.getLogger(__name__)
    tgt = get_target(target, option)
    out = Path(out)
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if out.suffix not in tgt.suffixes:
        raise PiDConfigError(f"{out}: {tgt.consumer} files are {' or '.join(tgt.suffixes)}; give the output "
                             "one of those suffixes")
    if split and tgt.name != "comfyui":
        raise PiDConfigError(f"the split adaLN layout is ComfyUI's; {_opt(option, tgt.name)} writes NVIDIA's "
                             f"joined one (use {_opt(option, 'comfyui')})")
    wf = src if isinstance(src, WeightsFile) else read_weights(src)
    if out.resolve() == Path(wf.path).resolve():
        raise PiDConfigError(f"{out} is the file being exported: give another output path")
    state, preset, where = model_of(wf, release, weights, release_option)
    tensors = target_tensors(state, tgt, dtype, split)
    if preset is not None:  # the preset describes the network as written (an aux head dropped or not)
        from pid.api import net_config_for_weights

        kept = [k for k in state if tgt.aux_head or not k.startswith("adapter.aux_rgb_head.")]
        preset["net"] = net_config_for_weights(preset["net"], kept)
    verdict = check(tgt, facts_for(tensors, preset, str(wf.path)))
    verdict.raise_if_refused(option)
    if preset is None and tgt.name == "pid":
        raise PiDConfigError(f"{wf.path} has no preset (none beside or inside it, no run config): name the "
                             f"network with {release_option} <preset name or file>; pid needs it to decode")
    if preset is None:
        log.warning("%s has no preset (none beside or inside it, no run config): writing the tensors without "
                    "one; name the network with %s <preset> to have it written beside the file", wf.path,
                    release_option)
    for warning in verdict.warnings:
        log.warning("%s: %s", _opt(option, tgt.name), warning)
    for note in verdict.notes:
        log.info("%s: %s", _opt(option, tgt.name), note)
    latent_file = None if preset is None else _latent_file(wf, preset, out)
    preset, metadata = preset_and_metadata(preset, out, tgt, latent_file, wf)
    tmp = _atomic(out)
    if tgt.name == "pid" and out.suffix == ".safetensors" and wf.config:
        config = dict(wf.config)
        from pid.identity import read_identity

        identity = read_identity(wf)  # the source's fingerprint travels on (not one derived from old files)
        write_export(tmp, state, config, int(config["sr_scale"]), wf.groups.get("latent"),
                     ema=wf.meta.get("ema", False) or "net_ema" in wf.groups,
                     identity=identity.to_dict() if identity is not None and not identity.derived else None)
        n = len(state)
    elif out.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(tensors, str(tmp), metadata=metadata)
        n = len(tensors)
    else:
        torch.save(tensors, str(tmp))
        n = len(tensors)
    tmp.replace(out)
    preset_path = out.with_suffix(".yaml") if preset is not None else None
    if preset_path is not None:
        preset_path.write_text(f"# Written by python -m pid.weights.export for {_opt(option, tgt.name)} from "
                               f"{wf.path} ({where})\n" + yaml.safe_dump(preset, sort_keys=False))
    return Exported(out, preset_path, latent_file, verdict, n)


def _opt(option: str, name: str) -> str:
    return f"{option}'{name}'" if option.endswith("=") else f"{option} {name}"


def _parser(prog: str, doc: str, src_help: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=doc)
    parser.add_argument("src", help=src_help)
    parser.add_argument("out", help="output .pth (NVIDIA's layout, e.g. model_ema_bf16.pth) or "
                                    ".safetensors (bf16, the preset also in its metadata); the preset goes "
                                    "beside it (.yaml)")
    parser.add_argument("--target", default="official", choices=list(TARGETS),
                        help="where the file will run: official (NVIDIA's code; default), comfyui, invokeai, "
                             "pid; a model the target cannot run correctly is refused, saying why")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                        help="bfloat16 as the releases; float32 keeps the weights exact")
    parser.add_argument("--weights", default="ema", choices=["ema", "raw"],
                        help="files with both: the EMA (default) or the training weights")
    parser.add_argument("--release", default=None,
                        help="the preset of a file that carries none (name, alias, official name or file)")
    parser.add_argument("--split-adaln", action="store_true",
                        help="--target comfyui: the pixel blocks' adaLN split as ComfyUI holds it internally")
    return parser


def run_cli(args, parser_prog: str) -> Path:
    """Run the export for parsed CLI ``args``; a refused or impossible export exits with its message."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        done = export_model(args.src, args.out, args.target, dtype=args.dtype, weights=args.weights,
                            release=args.release, split=args.split_adaln)
    except (PiDConfigError, FileNotFoundError) as err:  # a missing SRC is the user's input, not a crash
        raise SystemExit(f"{parser_prog}: {err}") from err
    latent = f", its latent {done.latent}" if done.latent else ""
    preset = f" and its preset {done.preset}" if done.preset else " (no preset)"
    print(f"wrote {done.path} ({done.num_tensors} tensors, {args.dtype}, --target {args.target})"
          f"{preset}{latent}")
    return done.path


def main(argv: list[str] | None = None) -> Path:
    """``python -m pid.weights.export SRC OUT [--target official|comfyui|invokeai|pid]``: a model trained here
    (a run's export or .ckpt) → a file for NVIDIA's code, ComfyUI, InvokeAI or pid, with its preset."""
    prog = "python -m pid.weights.export"
    args = _parser(prog, main.__doc__, "pid_decoder.safetensors, a run folder's export or a .ckpt of "
                   "pid.train").parse_args(argv)
    if Path(args.out).resolve() == Path(args.src).resolve():
        raise SystemExit(f"{args.out} is the file being exported: give another output path")
    return run_cli(args, prog)


if __name__ == "__main__":
    main()
