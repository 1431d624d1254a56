"""Which model a checkpoint or export is: the fingerprint of what it decodes.

A PiD network only makes sense with the latent space it was trained on, the text encoder whose states it
reads, its ``sr_scale`` and the parameterisation of its output. :class:`ModelIdentity` holds the four:

* the latent (:class:`LatentIdentity`): its class, channels, down factor, noise form, normalisation and a
  short hash of its defining tensors (a fitted PCA basis, a VAE's encoder weights, RAE statistics; rounded
  to bfloat16, so the same weights in float32 or bfloat16 hash alike) and geometry. A refitted PCA latent
  or another VAE of the same shape is another latent;
* the text encoder (:class:`TextIdentity`): none, or the model's name, tokens kept and the prefix's hash;
* ``sr_scale``, and the output parameterisation (``v``, ``x0 (t_min …)``, ``edm (sigma_data …)``).

Training writes it into every export (metadata key ``identity``) and ``.ckpt`` (``pid.identity``).
:func:`read_identity` reads it back; files written before fingerprints existed get an identity derived
from what they carry (their run config and embedded latent tensors, or a release preset for NVIDIA's
files), with a note saying so. :func:`check_compatible` is the one comparison every pairing uses (DMD2's
teacher and latent, evaluation's teacher and student, decoding with another latent's weights): a mismatch
raises :class:`IdentityMismatch` naming both identities, what differs and the caller's way to a correct run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from pid.utils.errors import PiDConfigError

log = logging.getLogger(__name__)

IDENTITY_FORMAT = 1
#: The key of the fingerprint in an export's metadata and in a checkpoint's ``pid`` dict.
META_KEY = "identity"
#: What :func:`check_compatible` can compare.
PARTS = ("latent", "text", "sr_scale", "prediction")
#: A latent known only by its geometry (``pid.latents.geometry.LatentGeometry``): class, normalisation and
#: tensors are not compared.
GEOMETRY_KIND = "LatentGeometry"
_DIGEST_CHARS = 12
# conf/latent/*.yaml targets that are factories rather than the class they build
_FACTORY_KINDS = {"pid.latents.patch_pca.embedded_latent": "PatchPCALatent"}


class IdentityMismatch(PiDConfigError):
    """Two things paired for one run decode different models; the message names both and the way on.

    ``short``: one line (what differs), for logs that list passed-over files."""

    def __init__(self, message: str, short: str):
        super().__init__(message)
        self.short = short


# --------------------------------------------------------------------------- the records
@dataclass(frozen=True)
class LatentIdentity:
    """What a latent space encodes.

    ``digest``: :data:`_DIGEST_CHARS` hex characters of the defining tensors and geometry, None when not
    known (a file written before fingerprints whose latent weights do not travel in it; a geometry-only
    latent). ``carried``: the file holds the latent's tensors (small embedded latents); a loader fills the
    latent from them. ``config``: the run's latent config where known (for advice; not compared)."""

    kind: str
    name: str
    channels: int
    down_factor: int
    noise_form: str
    normalisation: str
    digest: str | None
    carried: bool = field(default=False, compare=False)
    config: dict | None = field(default=None, compare=False, hash=False, repr=False)

    def describe(self) -> str:
        """One line: ``DiffusersVAELatent 'my_vae' (4 ch, 8× down, flow; shift 0, scale 1; #1a2b…)``."""
        digest = f"#{self.digest}" if self.digest else "tensors not fingerprinted"
        return (f"{self.kind} '{self.name}' ({self.channels} ch, {self.down_factor}× down, "
                f"{self.noise_form}; {self.normalisation}; {digest})")

    def to_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "config"}
        out["config"] = self.config
        return out


@dataclass(frozen=True)
class TextIdentity:
    """The text conditioning a network reads: none, or a model (its folder's name), tokens kept, prefix.

    None in a field: not known (release presets do not name the model's folder); such fields are not
    compared. The encoder's weights are not hashed (gigabytes): two folders of one name count as one."""

    uses_text: bool
    model: str | None = None
    max_length: int | None = None
    prefix: str | None = None  # a short hash of the prefix text, "none" without one

    def describe(self) -> str:
        if not self.uses_text:
            return "none"
        return (f"{self.model or 'unnamed model'} ({self.max_length if self.max_length else '?'} tokens, "
                f"prefix {self.prefix or '?'})")


@dataclass(frozen=True)
class ModelIdentity:
    """A model's fingerprint: latent, text encoder, sr_scale, output parameterisation.

    ``derived``: "" when read from a fingerprint; otherwise how it was derived (a file written before
    fingerprints, a release preset). ``config``: the run config of the file it was read from (advice only)."""

    latent: LatentIdentity
    text: TextIdentity
    sr_scale: int
    prediction: str
    derived: str = field(default="", compare=False)
    config: dict | None = field(default=None, compare=False, hash=False, repr=False)

    @property
    def digest(self) -> str:
        """A short hash of the whole identity (latent digest or, when unknown, its description)."""
        text = json.dumps([self.latent.digest or self.latent.describe(), asdict(self.text), self.sr_scale,
                           self.prediction], sort_keys=True)
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()[:_DIGEST_CHARS]

    def describe(self) -> str:
        """One line naming every part (and how it was derived, for files without a fingerprint)."""
        note = f" [{self.derived}]" if self.derived else ""
        return (f"latent {self.latent.describe()}, text {self.text.describe()}, sr_scale {self.sr_scale}, "
                f"prediction {self.prediction}{note}")

    def to_dict(self) -> dict:
        """Plain JSON-able dict (what files carry)."""
        return {"format": IDENTITY_FORMAT, "latent": self.latent.to_dict(), "text": asdict(self.text),
                "sr_scale": int(self.sr_scale), "prediction": self.prediction}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict | str, config: dict | None = None) -> "ModelIdentity":
        """Read a fingerprint written by :meth:`to_dict` (or its JSON).

        Raises:
            PiDConfigError: not a fingerprint of a format this code reads (names what is wrong)."""
        try:
            if isinstance(data, str):
                data = json.loads(data)
            if int(data.get("format", 0)) != IDENTITY_FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {IDENTITY_FORMAT}")
            lat = dict(data["latent"])
            latent = LatentIdentity(str(lat["kind"]), str(lat["name"]), int(lat["channels"]),
                                    int(lat["down_factor"]), str(lat["noise_form"]),
                                    str(lat["normalisation"]), lat.get("digest"),
                                    bool(lat.get("carried", False)), lat.get("config"))
            text = TextIdentity(**dict(data["text"]))
            return cls(latent, text, int(data["sr_scale"]), str(data["prediction"]), config=config)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise PiDConfigError(f"unreadable model fingerprint ({type(err).__name__}: {err})") from err


# --------------------------------------------------------------------------- built from live objects
def tensor_digest(tensors: dict[str, torch.Tensor], header: Iterable[Any] = ()) -> str:
    """A short hash of ``header`` and the named tensors, independent of device and float precision.

    Floating tensors are rounded to bfloat16 first, so one set of weights held in float32 or bfloat16
    hashes alike; keys are hashed in sorted order with each tensor's shape. Returns 12 hex characters."""
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(list(header)).encode())
    for key in sorted(tensors):
        t = tensors[key].detach()
        t = t.to(torch.bfloat16).view(torch.int16) if t.is_floating_point() else t.to(torch.int64)
        h.update(f"{key}:{tuple(t.shape)};".encode())
        h.update(t.contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:_DIGEST_CHARS]


def _fmt(value: float) -> str:
    """4 significant digits of the value as a float32 buffer holds it (a config's 1.5305 and the buffer's
    1.53049993 read alike)."""
    return f"{torch.tensor(float(value), dtype=torch.float32).item():.4g}"


def _normalisation_from_tensors(shift: torch.Tensor | None, scale: torch.Tensor | None) -> str:
    if shift is None or scale is None:
        return "none"
    if shift.numel() == 1 and scale.numel() == 1:
        return f"shift {_fmt(shift.reshape(()).item())}, scale {_fmt(scale.reshape(()).item())}"
    return f"per-channel shift/scale ({max(shift.numel(), scale.numel())})"


def _latent_normalisation(latent) -> str:
    if getattr(latent, "stats_mean", None) is not None:
        return "per-(C,H,W) mean/var statistics"
    if getattr(latent, "bn_stats", False):
        return "batch-norm statistics"
    return _normalisation_from_tensors(getattr(latent, "shift", None), getattr(latent, "scale", None))


def _header(kind: str, channels: int, down: int, noise_form: str) -> list:
    return [IDENTITY_FORMAT, kind, int(channels), int(down), str(noise_form)]


def latent_identity(latent, config: dict | None = None) -> LatentIdentity:
    """The identity of a built latent space (a :class:`pid.latents.base.LatentSpace`).

    Hashes ``latent.identity_tensors()`` (its state dict without parts that do not change the latent,
    e.g. a VAE's or RAE's decoder) with its class and geometry; a geometry-only latent has no digest."""
    kind = type(latent).__name__
    channels, down = int(latent.channels), int(latent.down_factor)
    noise_form = str(getattr(latent, "noise_form", "flow"))
    if kind == GEOMETRY_KIND:
        return LatentIdentity(kind, latent.name, channels, down, noise_form, "unknown", None, False, config)
    tensors = latent.identity_tensors() if hasattr(latent, "identity_tensors") else latent.state_dict()
    digest = tensor_digest(tensors, _header(kind, channels, down, noise_form))
    return LatentIdentity(kind, str(latent.name), channels, down, noise_form, _latent_normalisation(latent),
                          digest, bool(getattr(latent, "store_in_checkpoint", False)), config)


def text_identity(text_encoder) -> TextIdentity:
    """The identity of a built text encoder (None: no text conditioning)."""
    if text_encoder is None:
        return TextIdentity(False)
    model = getattr(getattr(getattr(text_encoder, "model", None), "config", None), "_name_or_path", None)
    model = Path(str(model)).name if model else type(text_encoder).__name__
    max_length = getattr(text_encoder, "max_length", None)
    return TextIdentity(True, model, int(max_length) if max_length else None,
                        _prefix_hash(getattr(text_encoder, "prefix", "")))


def _prefix_hash(prefix_text: str | None) -> str:
    if not prefix_text:
        return "none"
    return hashlib.blake2b(prefix_text.encode(), digest_size=4).hexdigest()


def prediction_of(net) -> str:
    """A built network's output parameterisation: ``v``, ``x0 (t_min 0.05)`` or ``edm (sigma_data 0.5)``."""
    return _prediction(getattr(net, "prediction", "v"), getattr(net, "x0_t_min", 0.05),
                       getattr(net, "sigma_data", 0.5))


def _prediction(kind: str | None, x0_t_min: float | None, sigma_data: float | None) -> str:
    kind = str(kind or "v")
    if kind == "x0":
        return f"x0 (t_min {_fmt(0.05 if x0_t_min is None else x0_t_min)})"
    if kind == "edm":
        return f"edm (sigma_data {_fmt(0.5 if sigma_data is None else sigma_data)})"
    return kind


def identity_of(net, latent, sr_scale: int, text_encoder=None, latent_config: dict | None = None,
                config: dict | None = None) -> ModelIdentity:
    """The identity of a network paired with its latent space, text encoder and ``sr_scale``."""
    return ModelIdentity(latent_identity(latent, latent_config), text_identity(text_encoder), int(sr_scale),
                         prediction_of(net), config=config)


def identity_of_module(module) -> ModelIdentity:
    """The identity of a training module (``PiDModule`` / ``DMD2Module``: ``net``, ``latent``,
    ``text_encoder``, ``sr_scale``; ``run_config`` when set)."""
    config = getattr(module, "run_config", None) or None
    if not hasattr(module.latent, "channels"):  # not a built latent space: what the run config says
        return identity_from_config(config or {}, derived="derived from its run config: no latent was built")
    return identity_of(module.net, module.latent, module.sr_scale, getattr(module, "text_encoder", None),
                       (config or {}).get("latent"), config)


# --------------------------------------------------------------------------- derived from what files carry
def _kind_of_config(latent_cfg: dict) -> str:
    target = str(latent_cfg.get("_target_") or "")
    return _FACTORY_KINDS.get(target) or target.rsplit(".", 1)[-1] or "unknown"


def _name_of_config(kind: str, cfg: dict) -> str:
    if cfg.get("name"):
        return str(cfg["name"])
    c, d = cfg.get("channels"), cfg.get("down_factor")
    names = {"PatchPCALatent": f"patch_pca{c}x{d}", "RGBLatent": "rgb",
             "RAELatent": f"rae_{cfg.get('encoder', 'dinov2')}"}
    return names.get(kind, f"{cfg.get('vae_class', kind)}_{c}x{d}")


def _normalisation_of_config(kind: str, cfg: dict, tensors: dict | None) -> str:
    if tensors and "shift" in tensors and "scale" in tensors:
        return _normalisation_from_tensors(tensors["shift"], tensors["scale"])
    if kind == "RAELatent":
        return "per-(C,H,W) mean/var statistics" if cfg.get("stats_path") else "none"
    if cfg.get("bn_stats"):
        return "batch-norm statistics"
    if cfg.get("latents_mean") is not None or kind == "DiffusersVAELatent" and cfg.get("vae_class") in (
            "AutoencoderKLQwenImage",):
        return f"per-channel shift/scale ({cfg.get('channels')})"
    if kind == "RGBLatent":
        return "shift 0, scale 1"
    return f"shift {_fmt(cfg.get('shift', 0.0))}, scale {_fmt(cfg.get('scale', 1.0))}"


def latent_identity_from_config(latent_cfg: dict, tensors: dict[str, torch.Tensor] | None = None
                                ) -> LatentIdentity:
    """A latent's identity from its config (and the tensors a file carries for it, which are hashed as
    :func:`latent_identity` hashes the built latent's). Without tensors the digest is unknown (None)."""
    cfg = dict(latent_cfg or {})
    kind = _kind_of_config(cfg)
    channels, down = int(cfg.get("channels", 0)), int(cfg.get("down_factor", 0))
    if kind == "RGBLatent":
        channels, down = 3, 1
    noise_form = str(cfg.get("noise_form") or "flow")
    digest = tensor_digest(tensors, _header(kind, channels, down, noise_form)) if tensors else None
    return LatentIdentity(kind, _name_of_config(kind, cfg), channels, down, noise_form,
                          _normalisation_of_config(kind, cfg, tensors), digest, bool(tensors), cfg)


def _text_of_config(text_cfg: dict | None) -> TextIdentity:
    text_cfg = dict(text_cfg or {})
    if not text_cfg.get("_target_"):
        return TextIdentity(False)
    from pid.text.prompts import resolve_prefix

    path = text_cfg.get("path")
    return TextIdentity(True, Path(str(path)).name if path else None,
                        int(text_cfg["max_length"]) if text_cfg.get("max_length") else None,
                        _prefix_hash(resolve_prefix(text_cfg.get("prefix"))))


def identity_from_config(config: dict, latent_tensors: dict[str, torch.Tensor] | None = None,
                         derived: str = "") -> ModelIdentity:
    """The identity a run config (and the latent tensors its file carries) describes."""
    net = ((config.get("model") or {}).get("net") or {})
    latent = latent_identity_from_config(config.get("latent") or {}, latent_tensors)
    return ModelIdentity(latent, _text_of_config(config.get("text")), int(config.get("sr_scale") or 1),
                         _prediction(net.get("prediction"), net.get("x0_t_min"), net.get("sigma_data")),
                         derived=derived, config=config)


def identity_from_release(release) -> ModelIdentity:
    """The identity a release preset (:class:`pid.weights.release.Release`, or its name) describes; NVIDIA's
    files carry no fingerprint, so their latent tensors are not known (digest None)."""
    from pid.weights.release import load_release

    rel = load_release(release)
    if rel.identity:  # a preset written by pid.weights.export carries the model's fingerprint
        return ModelIdentity.from_dict(rel.identity)
    latent_cfg = rel.latent_config() or {}
    latent = latent_identity_from_config(latent_cfg)
    prefix = _prefix_hash(_resolve_prefix(rel.text.get("prefix"))) if "prefix" in rel.text else None
    text = TextIdentity(bool(rel.text.get("states", True)), None,
                        int(rel.text["max_length"]) if rel.text.get("max_length") else None, prefix)
    net = rel.net
    return ModelIdentity(latent, text, int(rel.sr_scale or 1),
                         _prediction(net.get("prediction"), net.get("x0_t_min"), net.get("sigma_data")),
                         derived=f"derived from the release preset {rel.name}: NVIDIA's files carry no "
                                 "fingerprint")


def _resolve_prefix(prefix):
    from pid.text.prompts import resolve_prefix

    return resolve_prefix(prefix)


_OLD_FILE = "derived from its run config: written before fingerprints"


def read_identity(source, release=None) -> ModelIdentity | None:
    """The identity of a weights file: its fingerprint, else one derived from what it carries.

    Args:
        source: a path (any layout :func:`pid.weights.read_weights` reads; an export's fingerprint is read
            from its metadata without loading the network) or a :class:`pid.weights.formats.WeightsFile`.
        release: the release preset of a file that carries no config (NVIDIA's).

    Returns:
        The fingerprint when the file has one; for older files of this project an identity derived from
        their run config (the latent hashed from the tensors they carry; a VAE's weights unknown), with a
        note in ``derived``; for NVIDIA's files with ``release`` one derived from the preset; else None
        (nothing says what the file decodes).

    Raises:
        PiDConfigError: an unreadable file or fingerprint."""
    from pid.weights.formats import WeightsFile

    if not isinstance(source, WeightsFile) and str(source).endswith(".safetensors"):
        found = _read_export_identity(Path(str(source)).expanduser())
        if found is not None:
            return found
    if not isinstance(source, WeightsFile):
        from pid.weights.formats import read_weights

        source = read_weights(source)
    fingerprint = (source.meta or {}).get(META_KEY)
    if fingerprint:
        return ModelIdentity.from_dict(fingerprint, config=source.config)
    if source.config:
        return identity_from_config(source.config, source.groups.get("latent"), _derived_note(source.config))
    return identity_from_release(release) if release is not None else None


def _derived_note(config: dict) -> str:
    kind = _kind_of_config(config.get("latent") or {})
    carried = kind in ("PatchPCALatent", "RGBLatent")
    return _OLD_FILE + ("" if carried else "; its latent's weights were not fingerprinted")


def _read_export_identity(path: Path) -> ModelIdentity | None:
    """An export's identity from its metadata (and embedded latent tensors); None for other safetensors."""
    from safetensors import safe_open

    from pid.weights.formats import EXPORT_FORMAT

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != EXPORT_FORMAT:
                return None
            config = json.loads(meta.get("config") or "{}")
            if meta.get(META_KEY):
                return ModelIdentity.from_dict(meta[META_KEY], config=config)
            tensors = {k[len("latent."):]: f.get_tensor(k) for k in f.keys() if k.startswith("latent.")}
    except (OSError, ValueError) as err:
        raise PiDConfigError(f"{path} cannot be read as a safetensors export ({err}); is it complete?"
                             ) from err
    if not config:
        return None
    return identity_from_config(config, tensors or None, _derived_note(config))


# --------------------------------------------------------------------------- comparison
def differences(ours: ModelIdentity, theirs: ModelIdentity, parts: Iterable[str] = PARTS,
                latent_tensors: bool = True) -> list[str]:
    """What differs between two identities, as short phrases (empty: compatible).

    Args:
        parts: which of :data:`PARTS` must agree.
        latent_tensors: compare the latents' digests (False where one side adopts the other's carried
            latent tensors, as distillation adopts its teacher's embedded latent).
    Unknown values (a None digest or text field, a geometry-only latent's class and normalisation) are not
    compared."""
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise ValueError(f"unknown identity parts {bad}; expected some of {PARTS}")
    out: list[str] = []
    if "latent" in parts:
        a, b = ours.latent, theirs.latent
        geometry_only = GEOMETRY_KIND in (a.kind, b.kind)
        if not geometry_only and a.kind != b.kind:
            out.append(f"latent class {b.kind} vs {a.kind}")
        for what, x, y in (("channels", a.channels, b.channels),
                           ("down factor", a.down_factor, b.down_factor),
                           ("noise form", a.noise_form, b.noise_form)):
            if x != y:
                out.append(f"latent {what} {y} vs {x}")
        digests = a.digest is not None and b.digest is not None
        if not geometry_only and not out:
            if latent_tensors and digests and a.digest != b.digest:
                out.append(f"latent tensors #{b.digest} vs #{a.digest} (another fit or other weights)")
            elif not digests and a.normalisation != b.normalisation:
                out.append(f"latent normalisation {b.normalisation} vs {a.normalisation}")
    if "text" in parts:
        a, b = ours.text, theirs.text
        if a.uses_text != b.uses_text:
            out.append(f"text {b.describe()} vs {a.describe()}")
        elif a.uses_text:
            for what in ("model", "max_length", "prefix"):
                x, y = getattr(a, what), getattr(b, what)
                if x is not None and y is not None and x != y:
                    out.append(f"text {what} {y} vs {x}")
    if "sr_scale" in parts and ours.sr_scale != theirs.sr_scale:
        out.append(f"sr_scale {theirs.sr_scale} vs {ours.sr_scale}")
    if "prediction" in parts and ours.prediction != theirs.prediction:
        out.append(f"prediction {theirs.prediction} vs {ours.prediction}")
    return out


def check_compatible(ours: ModelIdentity, theirs: ModelIdentity | None, *, ours_label: str,
                     theirs_label: str, parts: Iterable[str] = PARTS, latent_tensors: bool = True,
                     advice: str | Callable[[list[str]], str] = "") -> list[str]:
    """Refuse a pairing of two models that decode different things; the one check every pairing uses.

    Args:
        ours, theirs: the two identities (``theirs`` None: a file that says nothing of what it decodes;
            nothing is compared and a note is returned).
        ours_label, theirs_label: what each is, as the message names it ("this run", "model.teacher_ckpt=…").
        parts, latent_tensors: see :func:`differences`.
        advice: the way to a correct run, appended to the message (or a function of the differences,
            the phrases of :func:`differences`, that returns it).

    Returns:
        Notes for the log (identities derived from old files or presets, comparisons left out).

    Raises:
        IdentityMismatch: the identities differ; the message names both, what differs and ``advice``."""
    parts = tuple(parts)
    if theirs is None:
        return [f"{theirs_label} carries no fingerprint or config: what it decodes is not checked"]
    differ = differences(ours, theirs, parts, latent_tensors)
    if differ:
        short = "; ".join(differ)
        raise IdentityMismatch(
            f"{theirs_label} and {ours_label} are not the same model (they differ in: {short}; "
            "the first value is theirs):\n"
            f"  {theirs_label}:\n      {theirs.describe()}\n"
            f"  {ours_label}:\n      {ours.describe()}\n"
            + ((advice(differ) if callable(advice) else advice) or "Pair files that were trained together."),
            short)
    notes = [f"{label} {ident.derived}" for label, ident in ((theirs_label, theirs), (ours_label, ours))
             if ident.derived]
    return notes


# --------------------------------------------------------------------------- advice
def run_overrides_for(config: dict, differ: Iterable[str], conf_dir: Path | None = None) -> list[str]:
    """Hydra overrides that give a run the latent, text encoder, sr_scale and parameterisation of the run
    whose config is ``config``, for the parts named in ``differ`` (phrases of :func:`differences`).

    The latent comes from its ``conf/latent`` group (the file whose ``_target_`` and ``name`` match, else
    another file of its class) plus every setting that differs from the group's file, so the run rebuilds
    the same latent; values are shell-quoted. Empty when no ``conf/latent`` file builds its latent's class
    (the caller then names the latent config itself)."""
    conf_dir = conf_dir or Path(__file__).resolve().parents[1] / "conf"
    differ = list(differ)
    out: list[str] = []
    if any(d.startswith("latent") for d in differ):
        cfg = dict(config.get("latent") or {})
        group, base = _latent_group(cfg, conf_dir)
        if group is None:  # no conf/latent file builds its class: no override can rebuild it
            return []
        out.append(f"latent={group}")
        skip = {"_target_", "dtype", "tiled_decode", "tile_size", "config_key", "fit_if_missing"}
        for key, value in cfg.items():
            if key in skip or value is None or not _scalar(value):
                continue
            if base.get(key) != value:
                out.append(f"latent.{key}={_q(value)}")
    if any(d.startswith("text") for d in differ):
        text = dict(config.get("text") or {})
        if not text.get("_target_"):
            out.append("text=none")
        else:
            out += ["text=gemma2"] + [f"text.{k}={_q(text[k])}" for k in ("path", "max_length", "prefix")
                                      if text.get(k) is not None]
    if any(d.startswith("sr_scale") for d in differ):
        out.append(f"sr_scale={int(config.get('sr_scale') or 1)}")
    if any(d.startswith("prediction") for d in differ):
        net = (config.get("model") or {}).get("net") or {}
        out.append(f"model.net.prediction={net.get('prediction') or 'v'}")
        out += [f"model.net.{k}={net[k]}" for k in ("sigma_data", "x0_t_min") if net.get(k) is not None]
    return out


def _latent_group(cfg: dict, conf_dir: Path) -> tuple[str | None, dict | None]:
    from omegaconf import OmegaConf

    same_target = []
    for file in sorted((conf_dir / "latent").glob("*.yaml")):
        try:
            data = OmegaConf.to_container(OmegaConf.load(file), resolve=False)
        except Exception:  # noqa: BLE001 — a broken file is not a match
            continue
        if not isinstance(data, dict) or data.get("_target_") != cfg.get("_target_"):
            continue
        if data.get("name") == cfg.get("name"):
            return file.stem, data
        same_target.append((sum(data.get(k) == v for k, v in cfg.items()), file.stem, data))
    if same_target:  # another file of the same class: its settings are overridden one by one
        _, stem, data = max(same_target, key=lambda t: t[0])
        return stem, data
    return None, None


def _scalar(value) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _q(value) -> str:
    if value is None:
        return "null"
    return shlex.quote(str(value))




def checked_decoder_identity(source, latent, release=None,
                             label: str = "the decoder") -> ModelIdentity | None:
    """The identity of a decoder file, after checking that ``latent`` (the latent space it is paired with:
    built from its config, or given by the caller) is the one it was trained on.

    Args:
        source: the decoder's :class:`pid.weights.formats.WeightsFile` (or path).
        latent: the built latent space (a geometry-only latent is checked by geometry alone).
        release: the preset of a file without a config (NVIDIA's).
        label: how the message names the file (``path=…``, ``--ckpt …``).

    Returns:
        The file's identity (None when nothing says what it decodes).

    Raises:
        IdentityMismatch: the latent is another one (another class, geometry, normalisation or tensors: a
            refitted PCA latent, another VAE's weights); the message names both and where the decoder's
            own latent weights were."""
    theirs = read_identity(source, release=release)
    if theirs is None:
        return None
    ours = ModelIdentity(latent_identity(latent), theirs.text, theirs.sr_scale, theirs.prediction)
    where = (theirs.latent.config or {}).get("path")
    advice = ("Decode with the latent space it was trained on"
              + (f": its weights were at {where} (latent.path={where})." if where
                 else ": build that latent space (its run's latent config) and pass it."))
    for note in check_compatible(ours, theirs, ours_label="the latent space paired with it",
                                 theirs_label=label, parts=("latent",), advice=advice):
        log.info("%s", note)
    return theirs


__all__ = ["GEOMETRY_KIND", "IdentityMismatch", "LatentIdentity", "META_KEY", "ModelIdentity", "PARTS",
           "TextIdentity", "check_compatible", "checked_decoder_identity", "differences",
           "identity_from_config", "identity_from_release", "identity_of", "identity_of_module",
           "latent_identity", "latent_identity_from_config", "prediction_of", "read_identity",
           "run_overrides_for", "tensor_digest", "text_identity"]
