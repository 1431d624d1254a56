"""Checks that run before anything is built, so a misconfigured run fails in seconds, not after loading."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pid.utils.errors import MissingWeightsError, PiDConfigError


def check_latent_geometry(cfg: DictConfig) -> None:
    """The latent (``latent=…``), ``sr_scale`` and the backbone patch size must fit together.

    One latent cell covers r = sr_scale × (latent.down_factor / latent.packing) / patch_size patch cells;
    the adapter needs r = 2^k or 1/2^k. The low-res image (data.crop_size / sr_scale) must also be a
    multiple of the latent's down factor. Raises PiDConfigError saying why and what to change.
    """
    latent = cfg.get("latent") or {}
    net = OmegaConf.select(cfg, "model.net", default=None) or {}
    down, channels = latent.get("down_factor"), latent.get("channels")
    sr, patch = cfg.get("sr_scale"), net.get("patch_size")
    if down is None or sr is None:
        return
    name = latent.get("name") or str(latent.get("_target_", "?")).rsplit(".", 1)[-1]  # no name: its factory
    packing = int(latent.get("packing") or 1)
    if down % packing or (channels is not None and channels % (packing * packing)):
        raise PiDConfigError(f"latent {name}: packing={packing} must divide down_factor={down} and packing² "
                             f"must divide channels={channels}")
    if patch is not None and net.get("adapter") is not None:
        from pid.nn.adapter import latent_grid_ratio

        try:
            latent_grid_ratio(int(sr), int(down) // packing, int(patch))
        except ValueError as err:
            raise PiDConfigError(
                f"latent={name} (down factor {down // packing}) cannot be used with sr_scale={sr} and "
                f"model.net.patch_size={patch}: {err}") from None
    crop = OmegaConf.select(cfg, "data.crop_size", default=None)
    if isinstance(crop, int) and crop % (int(sr) * int(down)):
        raise PiDConfigError(
            f"data.crop_size={crop} with sr_scale={sr} gives a {crop / int(sr):g}-pixel low-res image, "
            f"which is not a multiple of the latent's down factor {down} ({name}): use a crop size that is a "
            f"multiple of {int(sr) * int(down)}")
    buckets = OmegaConf.select(cfg, "data.buckets", default=None) or {}
    multiple = buckets.get("multiple")
    square = buckets.get("kind", "single") == "square"
    if isinstance(multiple, int) and not square and multiple % (int(sr) * int(down)):
        raise PiDConfigError(
            f"data.buckets.multiple={multiple}: the aspect-ratio buckets have sides that are multiples of "
            f"{multiple} pixels, but with sr_scale={sr} the low-res image must be a multiple of the latent's "
            f"down factor {down} ({name}): set data.buckets.multiple to a multiple of {int(sr) * int(down)} "
            "(or data.buckets.kind=square)")


def _present(value) -> bool:
    if value in (None, "", "???"):
        return False
    path = Path(str(value)).expanduser()
    return path.exists()


def check_required_weights(cfg: DictConfig) -> None:
    """Every key listed in ``cfg.required_weights`` must point to an existing file or folder.

    Raises one MissingWeightsError naming every key still to set and what it expects. The cheap
    latent-geometry check (:func:`check_latent_geometry`) runs first, so a misconfigured combination
    fails before anything is looked up or loaded.
    """
    check_latent_geometry(cfg)
    required = cfg.get("required_weights") or {}
    missing = []
    for key, expected in required.items():
        value = OmegaConf.select(cfg, key, throw_on_missing=False)
        if not _present(value):
            shown = "unset" if value in (None, "", "???") else f"'{value}' does not exist"
            missing.append(f"  {key}  ({shown})\n      expected: {expected}")
    if missing:
        lines = "\n".join(missing)
        overrides = " ".join(f"{line.split()[0]}=/path/to/..." for line in missing)
        raise MissingWeightsError.with_message(
            f"This experiment needs weights that are not on disk:\n{lines}\n"
            f"Set them on the command line, e.g.  make train exp=<name> {overrides}",
            config_key=missing[0].split()[0])


def check_mandatory_values(cfg: DictConfig) -> None:
    """Keys left as ``???`` in the config must be set on the command line."""
    from pid.utils.errors import PiDConfigError

    missing = sorted(k for k in OmegaConf.missing_keys(cfg) if not k.startswith("hydra."))
    if missing:
        raise PiDConfigError("These config keys must be set: " + ", ".join(missing)
                             + "  (e.g. " + " ".join(f"{k}=..." for k in missing) + ")")


@dataclass(frozen=True)
class _Range:
    """The values a numeric setting may take: ``low`` ≤ value ≤ ``high`` (``low < value`` when
    ``low_open``), a whole number when ``whole``."""

    name: str  # the key's last name (or its parent's, for per-network dicts such as warmup_steps.student)
    subtree: str  # where it lives ("" = top level)
    whole: bool
    low: float | None
    high: float | None
    what: str
    low_open: bool = False
    high_open: bool = False
    size: int | None = None  # a list of exactly this many values (Adam's betas)
    choices: Callable[[], tuple[str, ...]] | None = None  # names allowed instead of a number (looked up late)

    def problem(self, path: str, value) -> str | None:
        if isinstance(value, (list, tuple)):  # every element obeys the range (betas, student_t_list)
            if self.size is not None and len(value) != self.size:
                return f"{path}={value!r} must hold {self.size} values ({self.what})"
            found = [self.problem(f"{path}[{i}]", v) for i, v in enumerate(value)]
            return next((f for f in found if f), None)
        if self.choices is not None:
            names = self.choices()
            if value not in names:
                return f"{path}={value!r} must be one of {', '.join(names)} ({self.what})"
            return None
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if self.whole and not (numeric and float(value).is_integer()):
            return f"{path}={value!r} must be a whole number ({self.what})"
        if not numeric or not math.isfinite(value):
            return f"{path}={value!r} must be a finite number ({self.what})"
        below = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        above = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if below or above:
            low = f"> {self.low}" if self.low_open else f">= {self.low}"
            ends = ("(" if self.low_open else "[", ")" if self.high_open else "]")
            bounds = f"in {ends[0]}{self.low}, {self.high}{ends[1]}" if self.high is not None else low
            return f"{path}={value!r} must be {bounds} ({self.what})"
        return None


def _sampler_names() -> tuple[str, ...]:
    from pid.diffusion.samplers import SAMPLERS

    return tuple(sorted(SAMPLERS))


def _shift_rules() -> tuple[str, ...]:
    from pid.diffusion.flow import SHIFT_RULES

    return tuple(SHIFT_RULES)


# Numeric settings and their ranges: a learning rate of -1 or a batch size of 0 would otherwise surface as
# an error of torch or Lightning that does not name the key.
_RANGES = (
    _Range("lr", "model", False, 0, None, "a learning rate", low_open=True),
    _Range("weight_decay", "model", False, 0.0, None, "a weight decay"),
    _Range("latent_dropout", "model", False, 0.0, 1.0, "a probability"),
    _Range("caption_dropout", "model", False, 0.0, 1.0, "a probability"),
    _Range("min_lr_ratio", "model", False, 0.0, 1.0, "a fraction of the learning rate"),
    _Range("warmup_steps", "model", True, 0, None, "a number of steps"),
    _Range("num_steps", "model", True, 1, None, "a number of sampler steps"),
    _Range("batch_size", "data", True, 1, None, "a number of samples"),
    _Range("num_workers", "data", True, 0, None, "a number of loader processes"),
    _Range("crop_size", "data", True, 1, None, "a side in pixels"),
    _Range("sr_scale", "", True, 1, None, "a scale factor"),
    _Range("max_steps", "trainer", True, -1, None, "a number of steps (-1: no limit)"),
    _Range("accumulate_grad_batches", "trainer", True, 1, None, "a number of batches"),
    _Range("gradient_clip_val", "trainer", False, 0.0, None, "a gradient norm"),
    _Range("decay", "callbacks.ema", False, 0.0, 1.0, "an EMA decay"),
    _Range("seed", "", True, 0, 2**32 - 1, "a random seed"),
    _Range("max_crops", "compare_options", True, 1, None, "a number of held-out crops; null: all of them"),
    _Range("betas", "model", False, 0.0, 1.0, "Adam's moment decays", high_open=True, size=2),
    _Range("sigma_max", "model", False, 0.0, 1.0, "a latent noise level"),
    _Range("sigma_min", "model", False, 0.0, 1.0, "a latent noise level"),
    _Range("prob", "model.latent_noise", False, 0.0, 1.0, "a probability"),
    _Range("student_t_list", "model", False, 0.0, 1.0, "flow times of the student's steps"),
    _Range("student_every", "model", True, 1, None, "a number of iterations"),
    _Range("loss_weights", "model", False, 0.0, None, "a loss weight"),
    _Range("gen_weight", "model", False, 0.0, None, "a loss weight"),
    _Range("r1_weight", "model", False, 0.0, None, "a loss weight"),
    _Range("aux_rgb_weight", "model", False, 0.0, None, "a loss weight"),
    _Range("teacher_cfg", "model", False, 0.0, None, "a guidance scale"),
    _Range("latent_cfg", "model", False, 0.0, None, "a guidance scale"),
    _Range("text_cfg", "model", False, 0.0, None, "a guidance scale"),
    _Range("shift_base", "model", False, 0, None, "a time shift", low_open=True),
    _Range("shift_ref_size", "model", False, 0, None, "a side in pixels", low_open=True),
    _Range("shift_rule", "model", False, None, None, "a time-shift rule", choices=_shift_rules),
    _Range("logit_std", "model", False, 0, None, "a standard deviation", low_open=True),
    _Range("weight", "model.consistency", False, 0.0, None, "a loss weight"),
    _Range("sigmas", "callbacks.image_grid", False, 0.0, 1.0, "latent noise levels"),
    _Range("val_check_interval", "trainer", False, 0, None, "steps or an epoch fraction", low_open=True),
    _Range("log_every_n_steps", "trainer", True, 1, None, "a number of steps"),
    _Range("every_n_train_steps", "callbacks", True, 0, None, "a number of steps (0: off)"),
    _Range("sampler", "model", False, None, None, "a sampler", choices=_sampler_names),
)


def _leaves(node, prefix: str = "", parent: str = ""):
    """(dotted path, names) of every leaf under ``node`` (a plain container; a list is one leaf); names are
    the leaf's key and its parent's (a per-network value such as ``warmup_steps.student`` obeys
    ``warmup_steps``'s range)."""
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, dict):
                yield from _leaves(value, path, str(key))
            else:
                yield path, (str(key), parent)


def check_value_ranges(cfg: DictConfig) -> None:
    """Numeric settings must be numbers in their range (``_RANGES``), e.g. ``model.optimizer.lr`` > 0,
    ``data.batch_size`` ≥ 1, ``model.latent_dropout`` in [0, 1]; ``null`` is left to the code that reads it.

    Raises:
        PiDConfigError: naming every key out of range, its value and the range.
    """
    tree = OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False)
    tree.pop("hydra", None)
    problems = []
    for path, names in _leaves(tree):
        for rule in _RANGES:
            inside = path == rule.name if not rule.subtree else path.startswith(rule.subtree + ".")
            if rule.name not in names or not inside:
                continue
            try:
                value = OmegaConf.select(cfg, path, throw_on_missing=False)
                if OmegaConf.is_list(value):
                    value = OmegaConf.to_container(value, resolve=True)
            except Exception:  # an interpolation that cannot resolve yet is reported where it is read
                break
            if value is not None and value != "???" and (problem := rule.problem(path, value)):
                problems.append(problem)
            break
    if problems:
        example = problems[0].split("=", 1)[0] + "=..."
        raise PiDConfigError("Config values out of range:\n  " + "\n  ".join(problems)
                             + f"\nSet them on the command line, e.g. {example}")


def check_schedule(cfg: DictConfig) -> None:
    """A learning rate that decays over the run (``model.lr_decay=cosine``) needs the run's length."""
    decay = OmegaConf.select(cfg, "model.lr_decay", default=None)
    steps = OmegaConf.select(cfg, "trainer.max_steps", default=None)
    if decay == "cosine" and steps in (None, -1):
        raise PiDConfigError(f"model.lr_decay=cosine decays over trainer.max_steps, which is {steps} (no "
                             "limit): set trainer.max_steps to the run's length, or model.lr_decay=constant")


def check_config(cfg: DictConfig) -> None:
    """All checks that need nothing but the config."""
    from pid.parallel.context import check_config as check_context_parallel

    check_value_ranges(cfg)
    check_schedule(cfg)
    check_context_parallel(cfg)
    check_required_weights(cfg)
    check_mandatory_values(cfg)
