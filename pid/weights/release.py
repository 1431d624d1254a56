"""Release presets: one YAML file per released checkpoint under ``conf/releases/``.

A preset fixes what a released file needs to be used as NVIDIA trained it: the network config (PiD v1 or
v1.5, gate mode, PiT injection, aux head only where the file has one, RoPE mode and reference grid), the
latent space (a ``conf/latent/`` name or an inline config), the sr scale, the sampler and its defaults
(the students' t-list and 1-step t, the teachers' DPM-Solver++ with text CFG), the time-shift rule and
the text preprocessing (``text.states: false`` for a network trained without caption states; released
models always have them). ``release=`` takes a preset name (the file's stem), one of its aliases, the
official release name, or the path of a preset file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pid.utils.errors import PiDConfigError

log = logging.getLogger(__name__)

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
RELEASE_DIR = CONF_DIR / "releases"
KINDS = ("student", "teacher", "prior")


@dataclass
class Release:
    """A release preset read from its YAML file (see the module docstring for the fields)."""

    name: str
    release: str
    kind: str
    net: dict[str, Any]
    latent: str | dict[str, Any] | None
    sr_scale: int | None
    sampling: dict[str, Any] = field(default_factory=dict)
    time: dict[str, Any] = field(default_factory=dict)
    text: dict[str, Any] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)
    path: Path | None = None
    #: the model's fingerprint (:mod:`pid.identity`) when the preset was written by an export that had one
    identity: dict[str, Any] | None = None

    def latent_config(self) -> dict[str, Any] | None:
        """The latent space's config: ``conf/latent/<name>.yaml`` or the inline dict (unresolved)."""
        if self.latent is None or isinstance(self.latent, dict):
            return self.latent
        file = CONF_DIR / "latent" / f"{self.latent}.yaml"
        if not file.is_file():
            raise PiDConfigError(f"release {self.name}: no latent space {self.latent!r} (conf/latent/*.yaml)")
        cfg = OmegaConf.load(file)
        if self.sr_scale is not None:  # the few latent configs that interpolate ${sr_scale}
            cfg = OmegaConf.merge({"sr_scale": self.sr_scale}, {"latent": cfg}).latent
        return OmegaConf.to_container(cfg, resolve=False)

    def build_latent(self, path: str | None = None, geometry_only: bool = False):
        """The latent space, or only its geometry.

        Its encoder weights come from ``path``, e.g. a local VAE folder.
        """
        from hydra.utils import instantiate

        from pid.latents.geometry import LatentGeometry

        cfg = dict(self.latent_config() or {})
        if not cfg:
            raise PiDConfigError(f"release {self.name} ({self.kind}) has no latent space")
        if geometry_only:
            return LatentGeometry.from_config(cfg)
        if "path" in cfg and path is not None:
            cfg["path"] = str(path)
        from hydra.errors import InstantiationException

        from pid.utils.errors import MissingWeightsError

        try:
            return instantiate(cfg)
        except InstantiationException as err:  # say the latent's own error (missing weights: the key to set)
            if isinstance(err.__cause__, (MissingWeightsError, PiDConfigError)):
                raise err.__cause__ from None
            raise

    def build_net(self):
        """Instantiate the network (random init; load weights with :func:`pid.weights.load_weights`)."""
        from hydra.errors import InstantiationException
        from hydra.utils import instantiate

        try:
            return instantiate(self.net)
        except InstantiationException as err:
            cause = err.__cause__ or err
            raise PiDConfigError(f"release preset {self.path}: its `net` does not build: {cause}") from err


def preset_names() -> list[str]:
    """Stems of every preset under ``conf/releases/``."""
    return sorted(p.stem for p in RELEASE_DIR.glob("*.yaml"))


def _find(name: str) -> Path:
    file = RELEASE_DIR / f"{name}.yaml"
    if file.is_file():
        return file
    for path in sorted(RELEASE_DIR.glob("*.yaml")):
        data = OmegaConf.load(path)
        if name == data.get("release") or name in (data.get("aliases") or []):
            return path
    raise PiDConfigError(
        f"unknown release {name!r}: give a preset name ({', '.join(preset_names())}), one of "
        "their aliases or official names, or the path of a preset file"
    )


def load_release(name_or_path: str | Path | Release) -> Release:
    """Read a preset by name, alias, official release name or file path.

    Raises :class:`PiDConfigError` for an unknown name, a missing file or a preset without the required
    fields (``kind``, ``net``).
    """
    if isinstance(name_or_path, Release):
        return name_or_path
    text = str(name_or_path)
    path = Path(text).expanduser()
    if text.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise PiDConfigError(f"release preset file {path} does not exist")
    else:
        path = _find(text)
    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as err:  # noqa: BLE001 — YAML syntax, interpolation errors
        raise PiDConfigError(f"release preset {path} cannot be read: {err}") from err
    return release_from_dict(data, path, base_dir=path.parent)


def release_from_dict(data: Any, path: Path, base_dir: Path | None = None) -> Release:
    """A :class:`Release` from a preset's contents (``data``; read from ``path``: a preset file, or the
    weights file whose metadata holds it). A relative ``latent.path`` of an inline latent config is taken
    relative to ``base_dir`` (the preset's folder), so an exported preset works from any folder.

    Raises :class:`PiDConfigError` for contents that are not a preset (naming ``path``).
    """
    path = Path(path)
    if isinstance(data, dict) and isinstance(data.get("latent"), dict) and base_dir is not None:
        latent_path = data["latent"].get("path")
        if isinstance(latent_path, str) and latent_path and not Path(latent_path).expanduser().is_absolute():
            data = {**data, "latent": {**data["latent"], "path": str(Path(base_dir) / latent_path)}}
    if not isinstance(data, dict) or not isinstance(data.get("net"), dict) or data.get("kind") not in KINDS:
        got = data.get("kind") if isinstance(data, dict) else type(data).__name__
        raise PiDConfigError(f"{path} is not a release preset: it needs `kind` (one of {'/'.join(KINDS)}; "
                             f"got {got!r}) and a `net` mapping")
    known = {"release", "aliases", "kind", "latent", "sr_scale", "net", "sampling", "time", "text",
             "identity"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise PiDConfigError(f"{path}: unknown preset keys {unknown}; expected {sorted(known)}")
    rel = Release(
        name=path.stem,
        release=str(data.get("release") or path.stem),
        kind=data["kind"],
        net=dict(data["net"]),
        latent=data.get("latent"),
        sr_scale=data.get("sr_scale"),
        sampling=dict(data.get("sampling") or {}),
        time=dict(data.get("time") or {}),
        text=dict(data.get("text") or {}),
        aliases=list(data.get("aliases") or []),
        path=path,
        identity=data.get("identity"),
    )
    _check_consistent(rel)
    _check_sampling(rel)
    return rel


def find_preset(weights: str | Path, meta: dict | None = None) -> tuple[Release, str] | None:
    """The release preset that travels with a weights file, and where it was found (for the log).

    Looked for beside the file (``<stem>.yaml``, as ``pid.weights.export`` writes it; user-editable, so it
    wins), then inside it (``meta["preset"]``: the safetensors metadata of an export, see
    :func:`pid.weights.formats.read_weights`). None when neither exists.
    """
    weights = Path(weights)
    beside = weights.with_suffix(".yaml") if weights.is_file() else None
    if beside is not None and beside.is_file():
        return load_release(beside), f"the preset beside the file, {beside}"
    if meta and isinstance(meta.get("preset"), dict):
        return (release_from_dict(dict(meta["preset"]), weights, base_dir=weights.parent),
                f"the preset inside {weights} (its metadata)")
    return None


def _check_sampling(rel: Release) -> None:
    """The preset's sampler, step count, t-list and time shift are valid (checked by the functions that use
    them), so a wrong value stops at load, naming the preset."""
    from pid.diffusion import flow
    from pid.diffusion.samplers import get_sampler
    from pid.diffusion.schedules import student_timesteps

    s, t = rel.sampling, rel.time
    try:
        if "sampler" in s:
            get_sampler(s["sampler"])
        steps = s.get("num_steps")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise ValueError(f"sampling.num_steps must be an integer >= 1, got {steps!r}")
        if s.get("t_list") is not None:
            if not all(0.0 < float(v) <= 1.0 for v in s["t_list"]):
                raise ValueError(f"sampling.t_list values must be in (0, 1], got {s['t_list']}")
            student_timesteps(s["t_list"], steps, one_step_t=float(s.get("one_step_t", 1.0)))
        if t:
            flow.release_shift(1024, 1024, float(t.get("shift_base", 6.0)),
                               float(t.get("shift_ref_size", 2048)), t.get("shift_rule", "area"))
            if float(t.get("shift_base", 6.0)) <= 0:
                raise ValueError(f"time.shift_base must be > 0, got {t['shift_base']}")
    except (ValueError, TypeError) as err:
        raise PiDConfigError(f"release preset {rel.path}: {err}") from err


def _check_consistent(rel: Release) -> None:
    """The preset's sr_scale and latent space agree with its network's (one value said twice must match)."""
    pairs = [("sr_scale", rel.sr_scale, "net.sr_scale", rel.net.get("sr_scale"))]
    latent = rel.latent_config() if rel.kind != "prior" else None
    if latent:
        pairs += [("latent channels", latent.get("channels"), "net.latent_channels",
                   rel.net.get("latent_channels")),
                  ("latent down_factor", latent.get("down_factor"), "net.latent_down",
                   rel.net.get("latent_down"))]
    for name, value, net_name, net_value in pairs:
        if value is not None and net_value is not None and int(value) != int(net_value):
            raise PiDConfigError(f"release preset {rel.path}: {name} is {value} but {net_name} is "
                                 f"{net_value}; they must agree")


def apply_release(cfg: DictConfig) -> DictConfig:
    """Fix a composed training / evaluation config to ``cfg.release`` (no-op when it is null).

    Sets ``model.net`` (the preset's network; keys the preset does not name keep their values), ``sr_scale``
    and, where the model config has them, ``model.time`` shift fields. The latent space is selected with its
    own group (``latent=<name>``, so that ``latent.path`` overrides keep working): a run whose latent is
    another space stops with an error naming the override to add.
    """
    name = cfg.get("release")
    if not name:
        return cfg
    rel = load_release(name)
    latent_name = rel.latent if isinstance(rel.latent, str) else None
    run_latent = (cfg.get("latent") or {}).get("name")
    if latent_name and run_latent != latent_name:
        raise PiDConfigError(
            f"release {rel.name} decodes the {latent_name!r} latent space but the run uses "
            f"{run_latent!r}: add latent={latent_name} (and latent.path=...)"
        )
    OmegaConf.set_struct(cfg, False)
    model = cfg.model
    net = OmegaConf.create(rel.net)
    if (
        "adapter" in net
        and net.adapter is not None
        and "adapter" in model.net
        and model.net.adapter is not None
    ):
        model.net.adapter = net.adapter  # the preset's adapter replaces the group's whole
    model.net = OmegaConf.merge(model.net, net)
    if rel.sr_scale is not None:
        cfg.sr_scale = rel.sr_scale
        model.net.sr_scale = rel.sr_scale
    if "time" in model and model.time is not None and rel.time:
        for key in ("shift_base", "shift_ref_size"):
            if key in rel.time:
                model.time[key] = rel.time[key]
    log.info("release %s (%s): network, sr scale and time shift from %s", rel.name, rel.release, rel.path)
    return cfg
