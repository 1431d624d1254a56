"""Load a weights file into a network **strictly**, with a report of what went where.

Every tensor of the file is either loaded or skipped by a *named rule*; every tensor of the network is
either loaded or left at its initial value by a named rule. Anything else is an error naming the tensor.

Rules that skip file tensors (always on, each said in the report):

* ``other-weights``: the group not chosen (raw weights when the EMA is loaded, or the EMA with
  ``weights="raw"``);
* ``distillation-critics``: ``fake_score.*`` and ``discriminator.*`` of distillation checkpoints;
* ``frozen-teacher``: ``teacher.*`` of this project's DMD2 checkpoints (a copy of the teacher file);
* ``latent-space``: ``latent.*`` (loaded into the latent space by the caller, not into the network);
* ``unimplemented-official``: official parameters of paths pid does not build (LQ image branch, REPA, ED).

Rules a caller opts into (``allow``):

* ``adapter-at-init``: the file has no adapter at all (a PixelDiT prior starting a PiD teacher): the
  adapter, gates and heads keep their initial values;
* ``unused-aux-head``: the file has an aux RGB head the network was built without (distillation drops it,
  as the official recipe does).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from pid.utils.errors import MissingWeightsError, PiDConfigError
from pid.weights import official
from pid.weights.formats import WeightsFile, read_weights

log = logging.getLogger(__name__)

OPTIONAL_RULES = ("adapter-at-init", "unused-aux-head")
PARTS = ("backbone", "adapter", "gates", "heads")


def part_of(name: str) -> str:
    """The part of a PiDNet a parameter belongs to: backbone, adapter (trunk), gates or heads."""
    if not name.startswith("adapter."):
        return "backbone"
    if name.startswith(("adapter.gate_modules.", "adapter.pit_gate.")):
        return "gates"
    if name.startswith(("adapter.output_heads.", "adapter.pit_head.", "adapter.aux_rgb_head.")):
        return "heads"
    return "adapter"


@dataclass
class LoadReport:
    """What :func:`load_weights` did: tensors loaded per part, skipped per rule, left at init per part."""

    source: str
    layout: str
    group: str
    loaded: Counter = field(default_factory=Counter)
    skipped: dict[str, int] = field(default_factory=dict)
    left_at_init: dict[str, list[str]] = field(default_factory=dict)

    @property
    def num_left_at_init(self) -> int:
        return sum(len(v) for v in self.left_at_init.values())

    def summary(self) -> str:
        loaded = ", ".join(f"{p} {self.loaded[p]}" for p in PARTS if self.loaded[p])
        skipped = ", ".join(f"{n} ({rule})" for rule, n in self.skipped.items()) or "none"
        left = ", ".join(f"{p} {len(v)}" for p, v in self.left_at_init.items()) or "0"
        return (
            f"weights {self.source} [{self.layout}, {self.group}]: loaded {sum(self.loaded.values())} "
            f"tensors ({loaded}); skipped: {skipped}; left at init: {left}"
        )


def choose_group(wf: WeightsFile, weights: str = "ema") -> str:
    """The group holding the network: ``net_ema`` when present and ``weights="ema"``, else ``net``."""
    if weights not in ("ema", "raw"):
        raise PiDConfigError(f"weights must be 'ema' or 'raw', got {weights!r}")
    if weights == "ema" and "net_ema" in wf.groups:
        return "net_ema"
    if "net" in wf.groups:
        if weights == "raw" and wf.layout == "official-release":
            raise PiDConfigError(
                f"{wf.path} is a release file: it holds only the EMA weights (weights='raw' "
                "needs a full model.pth or a DCP folder)"
            )
        return "net"
    if "net_ema" in wf.groups:
        raise PiDConfigError(f"{wf.path} holds only EMA weights (net_ema); use weights='ema'")
    raise PiDConfigError(f"{wf.path} holds no network weights (groups: {sorted(wf.groups)})")


def load_weights(
    net: nn.Module,
    source: str | Path | WeightsFile,
    *,
    weights: str = "ema",
    allow: tuple[str, ...] | list[str] = (),
    config_key: str = "ckpt",
    log_summary: bool = True,
    dry_run: bool = False,
) -> LoadReport:
    """Load the network weights of ``source`` into ``net`` strictly; return (and log) the report.

    Args:
        net: a :class:`pid.nn.PiDNet` / :class:`pid.nn.PixelDiT` (any module with the project's names).
        source: a path of any layout of :mod:`pid.weights.formats`, or a file read already.
        weights: ``"ema"`` (default: the EMA weights where the file has them) or ``"raw"``.
        allow: optional rules (:data:`OPTIONAL_RULES`).
        config_key: the config key named in errors (``model.init_from``, ``model.teacher_ckpt``, ``ckpt``).
        dry_run: check and report without copying (e.g. a network built on the meta device, so that a file
            of another model is refused before a large network is allocated).

    Raises:
        MissingWeightsError: no file at the path.
        PiDConfigError: a file tensor no rule accounts for, a network tensor missing from the file, or a
            shape mismatch; the message names the tensors and the fix.
    """
    bad = [r for r in allow if r not in OPTIONAL_RULES]
    if bad:
        raise ValueError(f"unknown load rules {bad}; available: {OPTIONAL_RULES}")
    if not isinstance(source, WeightsFile):
        path = Path(str(source)).expanduser()
        if not path.exists():
            raise MissingWeightsError("network weights", config_key, "a weights file or DCP folder",
                                      path=path)
        source = read_weights(path)
    group = choose_group(source, weights)
    _refuse_foreign(source, group, net, config_key)
    report = LoadReport(str(source.path), source.layout, group)
    _skip_other_groups(source, group, report)
    own = net.state_dict()
    state = _match_file_tensors(source, group, own, allow, report, config_key)
    _check_network_covered(source, own, state, allow, report, config_key)
    if not dry_run:
        net.load_state_dict(state, strict=False)
    report.loaded.update(part_of(k) for k in state)
    if log_summary:
        log.info(report.summary())
    return report


_GROUP_RULES = {"net": "other-weights", "net_ema": "other-weights", "teacher": "frozen-teacher",
                "fake_score": "distillation-critics", "discriminator": "distillation-critics",
                "latent": "latent-space"}
_FIX = "pick its release preset (release=...) or model.net"


def _refuse_foreign(wf: WeightsFile, group: str, net: nn.Module, config_key: str) -> None:
    """A file sharing (almost) no tensor name with the network is named for what it is (a VAE, a text
    encoder, an image generator), not reported tensor by tensor."""
    from pid.weights.formats import foreign_model

    names = list(wf.groups[group])
    own = set(net.state_dict())
    if sum(n in own for n in names) >= 0.1 * max(len(names), 1):
        return
    what = foreign_model(names)
    if what is not None:
        raise PiDConfigError(
            f"{wf.path} is not a PiD model: it holds {what}, e.g. {sorted(names)[:3]}. Give the PiD "
            f"decoder's own file ({config_key}=...)"
            + ("; a VAE's weights belong to the latent space (latent.path)" if "VAE" in what else ""))
    if not any(n in own for n in names):
        raise PiDConfigError(
            f"{wf.path} is not a PiD / PixelDiT model: none of its {len(names)} tensors (e.g. "
            f"{sorted(names)[:3]}) has a name of the network. Give the PiD decoder's own file "
            f"({config_key}=...)")


def _count(report: LoadReport, rule: str, n: int = 1) -> None:
    report.skipped[rule] = report.skipped.get(rule, 0) + n


def _skip_other_groups(wf: WeightsFile, group: str, report: LoadReport) -> None:
    """Every group but the chosen one is skipped by its rule (:data:`_GROUP_RULES`)."""
    for other, tensors in wf.groups.items():
        if other != group:
            if other not in _GROUP_RULES:
                raise PiDConfigError(f"{wf.path}: no rule for the file's group {other!r}")
            _count(report, _GROUP_RULES[other], len(tensors))


def _match_file_tensors(wf: WeightsFile, group: str, own: dict, allow, report: LoadReport,
                        config_key: str) -> dict[str, torch.Tensor]:
    """The chosen group's tensors that the network holds (shapes checked); the rest skipped by a rule."""
    state: dict[str, torch.Tensor] = {}
    unexplained: list[str] = []
    for name, value in wf.groups[group].items():
        if name in own:
            if tuple(own[name].shape) != tuple(value.shape):
                raise PiDConfigError(
                    f"{wf.path}: tensor {name!r} has shape {tuple(value.shape)} in the file but "
                    f"{tuple(own[name].shape)} in the configured network ({config_key}); the file was "
                    f"trained with another net config: {_FIX}")
            state[name] = value
        elif official.is_unimplemented(name):
            _count(report, "unimplemented-official")
        elif name.startswith("adapter.aux_rgb_head.") and "unused-aux-head" in allow:
            _count(report, "unused-aux-head")
        else:
            unexplained.append(name)
    if unexplained:
        raise PiDConfigError(
            f"{wf.path}: {len(unexplained)} tensor(s) of the file fit nowhere in the configured network "
            f"({config_key}), e.g. {unexplained[:5]}. The file is of another model or another net config "
            f"(aux head, PiT injection, adapter width): {_FIX}")
    return state


def _check_network_covered(wf: WeightsFile, own: dict, state: dict, allow, report: LoadReport,
                           config_key: str) -> None:
    """Every network tensor is in the file, or left at init by ``adapter-at-init`` (file without adapter)."""
    missing = [k for k in own if k not in state]
    if missing and "adapter-at-init" in allow and not any(k.startswith("adapter.") for k in state):
        for k in missing:
            if k.startswith("adapter."):
                report.left_at_init.setdefault(part_of(k), []).append(k)
        missing = [k for k in missing if not k.startswith("adapter.")]
    if missing:
        raise PiDConfigError(
            f"{wf.path}: {len(missing)} tensor(s) of the configured network are not in the file "
            f"({config_key}), e.g. {missing[:5]}. The file is of another model or another net config: {_FIX}")
