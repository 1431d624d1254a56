"""Recognise and read every weights file the framework takes, into named groups of tensors.

Layouts (``WeightsFile.layout``):

============================  =====================================================================
``pid-export``                ``pid_decoder.safetensors`` written by training: ``net.*`` (EMA when the run
                              had one), ``latent.*`` (embedded latent spaces), metadata with the run config
``lightning``                 a ``.ckpt`` of ``pid.train``: ``state_dict`` (``net.*``, DMD2 runs also
                              ``fake_score.*``, ``teacher.*``, ``discriminator.*``), the EMA shadow under
                              ``ema.shadow`` and the run config under ``pid.config``
``official-release``          NVIDIA's consolidated ``model_ema_bf16.pth``: a flat ``{"net.<name>": bf16}``
                              dict of EMA weights with 0-d ``log_alpha`` (also PixelDiT's release)
``official-full``             NVIDIA's consolidated ``model.pth``: ``net.*`` (raw), ``net_ema.*`` (EMA)
                              and, for distillation runs, ``fake_score.*`` and ``discriminator.*``,
                              float32
``official-dcp``              an official torch.distributed.checkpoint folder: ``checkpoints/`` (read through
                              ``latest_checkpoint.txt``), ``iter_*/`` or its ``model/`` subfolder
``state-dict``                any other flat state dict (``.safetensors`` / ``.pt`` / ``.pth``) of a network
============================  =====================================================================

Groups (``WeightsFile.groups``) use the project's parameter names without prefix: ``net`` (raw or
only weights), ``net_ema`` (EMA), ``fake_score``, ``discriminator``, ``teacher`` (DMD2's frozen copy) and
``latent``. Everything is read weights-only (``torch.load(weights_only=True)`` / safetensors): no code runs
from a file. DCP folders are read on one process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pid.utils.errors import PiDConfigError
from pid.weights import official

EXPORT_FORMAT = "pid-decoder-1"

# prefixes of the groups in official full / DCP checkpoints
OFFICIAL_GROUPS = ("net_ema", "net", "fake_score", "discriminator")
# prefixes of the groups in this project's Lightning checkpoints
LIGHTNING_GROUPS = ("net", "fake_score", "teacher", "discriminator", "latent", "text_encoder")


@dataclass
class WeightsFile:
    """A weights file read into groups of tensors (project names)."""

    path: Path
    layout: str
    groups: dict[str, dict[str, torch.Tensor]]
    config: dict[str, Any] | None = None  # the run config of files written by this project
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def official(self) -> bool:
        return self.layout.startswith("official")

    def describe(self) -> str:
        sizes = ", ".join(f"{g}: {len(t)}" for g, t in self.groups.items())
        return f"{self.path} ({self.layout}; {sizes})"


def read_weights(path: str | Path) -> WeightsFile:
    """Read ``path`` (file or DCP folder) and recognise its layout; see the module docstring.

    Raises :class:`FileNotFoundError` for a missing path and :class:`PiDConfigError` for a file that is
    not a weights file of a known layout (naming what was found).
    """
    path = Path(str(path)).expanduser()
    if path.is_dir():
        return _read_dcp(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file or DCP folder at {path}")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    import zipfile

    if not zipfile.is_zipfile(path):  # torch.save files are zip archives (since torch 1.6)
        with open(path, "rb") as f:
            head = f.read(8)
        raise PiDConfigError(
            f"{path} is not a weights file: a .safetensors file or a torch.save archive (.pth, .pt, .ckpt) "
            f"was expected, and it is neither (it starts with {head!r}; a partly copied or downloaded file, "
            "or another kind of file?)")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 — a pickle that needs code, a truncated file, ...
        raise PiDConfigError(f"{path} cannot be read as a weights-only torch file: {err}") from err
    if not isinstance(obj, dict):
        raise PiDConfigError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    if isinstance(obj.get("pid"), dict) and isinstance(obj.get("state_dict"), dict):
        return _from_lightning(path, obj)
    for key in ("state_dict", "model", "module"):  # plain wrappers of one state dict
        if isinstance(obj.get(key), dict) and all(isinstance(v, torch.Tensor) for v in obj[key].values()):
            obj = obj[key]
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if len(tensors) != len(obj):
        other = sorted(k for k, v in obj.items() if not isinstance(v, torch.Tensor))
        raise PiDConfigError(f"{path}: not a state dict (entries that are not tensors: {other[:5]})")
    return _from_flat(path, tensors)


def _read_safetensors(path: Path) -> WeightsFile:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # noqa: BLE001 — a truncated or foreign file
        raise PiDConfigError(f"{path} cannot be read as a safetensors file ({err}); is it complete?") from err
    if meta.get("format") == EXPORT_FORMAT:
        groups = _split(tensors, ("net", "latent"))
        return WeightsFile(
            path,
            "pid-export",
            groups,
            json.loads(meta.get("config") or "{}"),
            {"ema": meta.get("ema") == "True", "sr_scale": meta.get("sr_scale"),
             "identity": meta.get("identity")},
        )
    return _from_flat(path, tensors)


def _from_lightning(path: Path, ckpt: dict) -> WeightsFile:
    groups = _split(ckpt["state_dict"], LIGHTNING_GROUPS)
    shadow = (ckpt.get("ema") or {}).get("shadow") or {}
    if shadow:  # the EMA tracks the trained tensors; the rest (frozen parts) are the same in both
        groups["net_ema"] = {**groups.get("net", {}), **shadow}
    groups.pop("text_encoder", None)
    meta = {"global_step": ckpt.get("global_step"), "distill": (ckpt["pid"] or {}).get("distill"),
            "identity": (ckpt["pid"] or {}).get("identity")}
    return WeightsFile(path, "lightning", groups, ckpt["pid"].get("config") or None, meta)


def _from_flat(path: Path, tensors: dict[str, torch.Tensor]) -> WeightsFile:
    """A flat dict: official (``net.``-prefixed groups) or a bare / wrapped state dict of a network."""
    prefixes = {k.split(".", 1)[0] for k in tensors}
    if prefixes and prefixes <= set(OFFICIAL_GROUPS):
        groups = {
            g: (official_discriminator_names(t) if g == "discriminator" else official_names(t))
            for g, t in _split(tensors, OFFICIAL_GROUPS).items()
        }
        layout = "official-release" if prefixes == {"net"} else "official-full"
        return WeightsFile(path, layout, groups)
    for prefix in ("model.net.", "module.", "model."):
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
            break
    if any(k.startswith(("lq_proj.", "pit_lq_gate.")) for k in tensors):  # an official net, unprefixed
        return WeightsFile(
            path, "state-dict", {"net": official_names(tensors)}, meta={"official_names": True}
        )
    return WeightsFile(path, "state-dict", {"net": tensors})


def official_names(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official parameter names → ours; 0-d ``log_alpha`` → shape (1,) (the project's gate parameter)."""
    out = {}
    for name, value in tensors.items():
        new = name if official.is_unimplemented(name) else official.to_project_name(name)
        if new.endswith("log_alpha") and value.ndim == 0:
            value = value.reshape(1)
        out[new] = value
    return out


def official_discriminator_names(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official ``Discriminator_ImageDiT`` parameter names (no ``discriminator.`` prefix) → ours."""
    return {official.discriminator_to_project_name(k): v for k, v in tensors.items()}


def _split(tensors: dict[str, torch.Tensor], groups: tuple[str, ...]) -> dict[str, dict[str, torch.Tensor]]:
    """{"a.x": t, "b.y": u} → {"a": {"x": t}, "b": {"y": u}} for the given group prefixes."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    other = []
    for key, value in tensors.items():
        group, _, name = key.partition(".")
        if group in groups and name:
            out.setdefault(group, {})[name] = value
        else:
            other.append(key)
    if other:
        raise PiDConfigError(
            f"tensors outside the groups {groups}: {sorted(other)[:5]} "
            f"({len(other)} in all); the file is not of a layout pid reads"
        )
    return out


def _dcp_model_dir(path: Path) -> Path:
    """checkpoints/ (latest_checkpoint.txt) → iter_*/ → model/ : the folder holding ``.metadata``."""
    if (path / "latest_checkpoint.txt").is_file():
        path = path / (path / "latest_checkpoint.txt").read_text().strip()
    if (path / "model" / ".metadata").is_file():
        path = path / "model"
    if not (path / ".metadata").is_file():
        raise PiDConfigError(
            f"{path} is a folder but not a torch.distributed.checkpoint model folder (no "
            "'.metadata'); give the official checkpoints/, iter_*/ or model/ folder, or a file"
        )
    return path


def _read_dcp(path: Path) -> WeightsFile:
    """Read the tensors of an official DCP model folder on one process (no process group needed)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    model_dir = _dcp_model_dir(path)
    reader = dcp.FileSystemReader(str(model_dir))
    metadata = reader.read_metadata()
    state = {
        k: torch.empty(m.size, dtype=m.properties.dtype)
        for k, m in metadata.state_dict_metadata.items()
        if isinstance(m, TensorStorageMetadata)
    }
    dcp.load(state, storage_reader=reader, no_dist=True)
    wf = _from_flat(model_dir, state)
    if not wf.official:
        raise PiDConfigError(
            f"{model_dir}: DCP folder without the official net.* / net_ema.* groups "
            f"(found {sorted({k.split('.', 1)[0] for k in state})[:5]})"
        )
    return WeightsFile(model_dir, "official-dcp", wf.groups, meta={"folder": str(path)})
