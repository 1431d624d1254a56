"""The metric registry of `make eval`: what a metric is, and the suite that runs the configured ones.

A metric is one small object (a :class:`Metric` subclass) that says

- its **columns**: the keys it adds to each result row, with the header, number format and
  direction used by results.md, results.csv, the W&B table and the log line;
- what it **needs**: ``"reference"`` (the ground-truth images: the metric is reported as
  unavailable on a set without them), ``"captions"`` (one per image), ``"crops"`` (the seeded
  native-resolution crops of ``crops:`` in conf/eval.yaml, cut with :meth:`EvalContext.crops`);
- how it scores a batch of outputs (:meth:`Metric.score`), and, for a paired metric that can be
  split by group, how it scores a (prediction, ground truth) pair (:meth:`Metric.score_pair`).

The registry itself is the ``metrics:`` mapping of conf/eval.yaml: one entry per metric, a name and
a ``_target_`` class with its settings, in column order. Adding a metric is one class plus one
entry (docs/adding_a_metric.md); removing one is ``~metrics.NAME`` or ``metrics.NAME=null``.
Images reach every metric through :func:`pid.eval.images.as_metric_images`: float32 in [-1, 1].
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from pid.eval.images import Positions, as_metric_images, crop_positions, take_crops

NEEDS = frozenset({"reference", "captions", "crops"})


@dataclass(frozen=True)
class Column:
    """One value of a result row: ``key`` (results.csv / results.json), ``header`` (results.md,
    without the arrow), ``fmt`` (a format spec) and ``better`` (``"lower"``, ``"higher"`` or None)."""

    key: str
    header: str
    fmt: str = ".3g"
    better: str | None = None

    @property
    def title(self) -> str:
        return self.header + {"lower": "↓", "higher": "↑"}.get(self.better or "", "")

    def format(self, value) -> str:
        return format(value, self.fmt)


@dataclass
class EvalContext:
    """What metrics may use besides the outputs: the ground truth (float [-1, 1] or None), one
    caption per image, the device, and the seeded crop positions (``crops:`` in conf/eval.yaml)."""

    truth: torch.Tensor | None
    captions: list[str]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    crop_size: int = 64
    crops_per_image: int = 8
    crop_seed: int = 0
    _positions: Positions | None = None

    def positions(self, images: torch.Tensor) -> Positions:
        """Crop corners for a set shaped like ``images``: drawn once, identical for every method."""
        if self._positions is None:
            h, w = images.shape[-2:]
            self._positions = crop_positions(h, w, self.crop_size, self.crops_per_image, len(images),
                                             self.crop_seed)
        return self._positions

    def crops(self, images: torch.Tensor) -> torch.Tensor:
        """The ``crop_size``² crops of ``images`` at this evaluation's positions."""
        return take_crops(images, self.positions(images), self.crop_size)


class Metric:
    """Base class of the metrics of `make eval` (see the module docstring).

    Subclasses set ``columns`` (and ``needs``, ``per_group``) and implement :meth:`score`; the
    constructor takes the settings of the metric's config entry. ``name`` is the entry's key.
    """

    columns: ClassVar[tuple[Column, ...]] = ()
    needs: ClassVar[frozenset[str]] = frozenset()
    per_group: ClassVar[bool] = False  # scored per group of data.groups with score_pair
    name: str = ""
    caveat: str | None = None  # a remark for the Notes of the report (e.g. a small sample), set by the metric

    def setup(self, ctx: EvalContext) -> str | None:
        """Load models and reference statistics once. Returns why the metric cannot run (shown in
        its cells and under Notes), or None when it can."""
        return None

    def score(self, images: torch.Tensor, ctx: EvalContext) -> dict[str, float]:
        """Values of this metric's columns for one set of outputs (float [-1, 1], aligned with
        ``ctx.truth`` and ``ctx.captions``). Extra keys (e.g. a standard deviation) go to
        results.json."""
        raise NotImplementedError

    def score_pair(self, pred: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
        """Paired metrics with ``per_group``: the values on one subset of outputs and ground truth."""
        raise NotImplementedError


def nanmean(values) -> float:
    v = [float(x) for x in values if not math.isnan(float(x))]
    return sum(v) / len(v) if v else float("nan")


class MetricSuite:
    """The configured metrics of one evaluation: set up once, then called on each set of outputs.

    ``notes`` maps a metric's name to the text shown for it: why it has no value, or its caveat.
    """

    def __init__(self, metrics: Mapping[str, Metric | None], ctx: EvalContext):
        self.ctx = ctx
        self.metrics: list[Metric] = []
        self.notes: dict[str, str] = {}
        self.active: list[Metric] = []
        keys: set[str] = set()
        for name, metric in metrics.items():
            if metric is None:  # metrics.NAME=null: left out of the report
                continue
            metric.name = str(name)
            unknown = set(metric.needs) - NEEDS
            if unknown:
                raise ValueError(f"metric {name}: unknown needs {sorted(unknown)} "
                                 f"(choose from {sorted(NEEDS)})")
            clash = keys & {c.key for c in metric.columns}
            if clash:
                raise ValueError(f"metric {name}: column(s) {sorted(clash)} already belong to another metric")
            keys |= {c.key for c in metric.columns}
            self.metrics.append(metric)
            if "reference" in metric.needs and ctx.truth is None:
                reason = "no ground truth (data.kind=latents)"
            else:
                reason = metric.setup(ctx)
            if reason:
                self.notes[metric.name] = reason
            else:
                self.active.append(metric)
                self._take_caveat(metric)

    def _take_caveat(self, metric: Metric) -> None:
        if metric.caveat:
            self.notes[metric.name] = metric.caveat

    @property
    def columns(self) -> list[Column]:
        return [c for m in self.metrics for c in m.columns]

    @property
    def group_columns(self) -> list[Column]:
        return [c for m in self.active if m.per_group for c in m.columns]

    def column_notes(self) -> dict[str, str]:
        """Column key → its metric's note (what a cell without a value shows)."""
        return {c.key: self.notes[m.name] for m in self.metrics if m.name in self.notes for c in m.columns}

    def __call__(self, images: torch.Tensor) -> dict[str, float]:
        """Every column for one set of outputs (NaN where a metric is unavailable)."""
        images = as_metric_images(images)
        row = {c.key: float("nan") for c in self.columns}
        for metric in self.active:
            values = metric.score(images, self.ctx)
            missing = {c.key for c in metric.columns} - set(values)
            if missing:
                raise KeyError(f"metric {metric.name} returned no value for {sorted(missing)}")
            row.update(values)
            self._take_caveat(metric)
        return row

    def by_group(self, images: torch.Tensor, groups: Mapping[str, torch.Tensor]) -> dict[str, dict]:
        """{group: {"n": size, column: value, ...}} for the ``per_group`` metrics."""
        paired = [m for m in self.active if m.per_group]
        if self.ctx.truth is None or not paired:
            return {}
        images = as_metric_images(images)
        out = {}
        for name, mask in groups.items():
            out[name] = {"n": int(mask.sum())}
            for metric in paired:
                out[name].update(metric.score_pair(images[mask], self.ctx.truth[mask]))
        return out

    def log_line(self, row: Mapping) -> str:
        """``key=value`` for every column with a value, in registry order, then the latency."""
        parts = [f"{c.key}={row[c.key]:.3g}" for c in self.columns
                 if isinstance(row.get(c.key), float) and not math.isnan(row[c.key])]
        if isinstance(row.get("latency_ms"), float):
            parts.append(f"latency_ms={row['latency_ms']:.3g}")
        return "  ".join(parts)
