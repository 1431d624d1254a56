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
``comfyui``                   a file as ComfyUI takes or holds it: NVIDIA names with no prefix or
                              ``model.diffusion_model.``, and/or the pixel blocks' adaLN split into
                              ``adaLN_modulation_msa`` / ``_mlp`` (joined back on reading, exactly)
``state-dict``                any other flat state dict (``.safetensors`` / ``.pt`` / ``.pth``) of a network
============================  =====================================================================

Files written by ``pid.weights.export`` / ``convert`` as ``.safetensors`` carry their release preset in
the metadata (``pid.preset``, JSON); it is returned as ``WeightsFile.meta["preset"]``.

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
#: safetensors metadata key holding an exported file's release preset (JSON)
PRESET_KEY = "pid.preset"
#: ComfyUI's prefix of a diffusion model inside a whole-pipeline state dict
COMFY_PREFIX = "model.diffusion_model."

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
    wf = _from_flat(path, tensors)
    if meta.get("identity"):  # the model's fingerprint (pid.identity), as exports carry it
        wf.meta["identity"] = meta["identity"]
    if meta.get(PRESET_KEY):
        try:
            wf.meta["preset"] = json.loads(meta[PRESET_KEY])
        except ValueError as err:
            raise PiDConfigError(f"{path}: its metadata {PRESET_KEY!r} is not JSON ({err})") from err
    return wf


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
    """A flat dict: official (``net.``-prefixed groups), ComfyUI's layouts, or another state dict."""
    comfy = False
    if tensors and all(k.startswith(COMFY_PREFIX) for k in tensors):
        tensors, comfy = {k[len(COMFY_PREFIX):]: v for k, v in tensors.items()}, True
    if any(k.endswith(("adaLN_modulation_msa.weight", "adaLN_modulation_msa.bias")) for k in tensors):
        tensors, comfy = join_adaln(tensors), True
    prefixes = {k.split(".", 1)[0] for k in tensors}
    if prefixes and prefixes <= set(OFFICIAL_GROUPS):
        groups = {
            g: (official_discriminator_names(t) if g == "discriminator" else official_names(t))
            for g, t in _split(tensors, OFFICIAL_GROUPS).items()
        }
        layout = "official-release" if prefixes == {"net"} else "official-full"
        return WeightsFile(path, "comfyui" if comfy else layout, groups)
    for prefix in ("model.net.", "module.", "model."):
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
            break
    if any(k.startswith(("lq_proj.", "pit_lq_gate.")) for k in tensors):  # an official net, unprefixed
        return WeightsFile(path, "comfyui" if comfy else "state-dict", {"net": official_names(tensors)},
                           meta={"official_names": True})
    return WeightsFile(path, "state-dict", {"net": tensors})


def _pixel_width(tensors: dict[str, torch.Tensor], key: str) -> int:
    """The pixel width d beside a pixel-block tensor (rows of the pixel embedder with the same prefix)."""
    embed = key.split("pixel_blocks.", 1)[0] + "pixel_embedder.proj.weight"
    if embed not in tensors:
        raise PiDConfigError(f"pixel-block adaLN tensor {key!r} without {embed}: the pixel width is unknown, "
                             "so the adaLN layout cannot be converted (not a whole network file)")
    return int(tensors[embed].shape[0])


def join_adaln(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI's split pixel-block adaLN → NVIDIA's joined ``adaLN_modulation.0`` (exact; other tensors
    unchanged).

    ComfyUI views ``pixel_blocks.N.adaLN_modulation.0.{weight,bias}`` ``[6·P²·d, …]`` as ``[P², 6, d, …]``
    and stores chunks 0–2 as ``adaLN_modulation_msa`` and 3–5 as ``adaLN_modulation_mlp`` (each
    ``[3·P²·d, …]``); this concatenates them back along the chunk axis. A lone half raises
    :class:`PiDConfigError`."""
    out = {}
    for key, value in tensors.items():
        if ".adaLN_modulation_mlp." in key:
            if key.replace("_mlp.", "_msa.") not in tensors:
                raise PiDConfigError(f"{key} without its adaLN_modulation_msa half: not a whole ComfyUI file")
            continue
        if ".adaLN_modulation_msa." not in key:
            out[key] = value
            continue
        mlp_key = key.replace("_msa.", "_mlp.")
        if mlp_key not in tensors:
            raise PiDConfigError(f"{key} without its adaLN_modulation_mlp half: not a whole ComfyUI file")
        p2 = int(value.shape[0]) // (3 * _pixel_width(tensors, key))
        rest = tuple(value.shape[1:])
        msa = value.reshape(p2, 3, -1, *rest)
        mlp = tensors[mlp_key].reshape(p2, 3, -1, *rest)
        out[key.replace(".adaLN_modulation_msa.", ".adaLN_modulation.0.")] = torch.cat([msa, mlp], 1).reshape(
            -1, *rest)
    return out


def split_adaln(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """NVIDIA's joined pixel-block ``adaLN_modulation.0`` → ComfyUI's ``adaLN_modulation_msa`` / ``_mlp``
    (the inverse of :func:`join_adaln`, exact). Names may carry a prefix (``net.``)."""
    out = {}
    for key, value in tensors.items():
        if "pixel_blocks." not in key or ".adaLN_modulation.0." not in key:
            out[key] = value
            continue
        p2 = int(value.shape[0]) // (6 * _pixel_width(tensors, key))
        rest = tuple(value.shape[1:])
        six = value.reshape(p2, 6, -1, *rest)
        out[key.replace(".adaLN_modulation.0.", ".adaLN_modulation_msa.")] = six[:, :3].reshape(-1, *rest)
        out[key.replace(".adaLN_modulation.0.", ".adaLN_modulation_mlp.")] = six[:, 3:].reshape(-1, *rest)
    return out


#: key patterns of weights files that are not PiD networks, and what they are
FOREIGN = (
    (("encoder.", "decoder.", "quant_conv.", "post_quant_conv.", "first_stage_model.", "vae."),
     "a VAE (autoencoder: encoder.* / decoder.* tensors)"),
    (("text_model.", "model.layers.", "model.embed_tokens.", "encoder.block.", "shared.", "embed_tokens."),
     "a text encoder"),
    (("double_blocks.", "single_blocks.", "transformer_blocks.", "joint_blocks.", "input_blocks.",
      "down_blocks.", "model.diffusion_model.input_blocks."), "an image generator (a UNet / DiT)"),
)


def foreign_model(names) -> str | None:
    """What a weights file that is not a PiD / PixelDiT network holds, from its tensor names (None when
    it does not look like one of :data:`FOREIGN`): e.g. "a VAE (autoencoder: …)"."""
    names = list(names)
    if not names:
        return None
    for prefixes, what in FOREIGN:
        if sum(n.startswith(prefixes) for n in names) >= 0.5 * len(names):
            return what
    return None


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
