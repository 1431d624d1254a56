"""The one rule by which pid names a winner, used by every line that does: the quickstart's held-out
comparison, the DMD2 student/teacher summary and `make eval`'s headlines and early-exit sweep.

A decoder A is named ahead of a decoder B on a measure only when all three hold:

1. **the measure is not fooled by grain** at the sizes in use: scored on the same crops, it does not
   prefer "native decode + bicubic + Gaussian grain (σ = 0.1 on [-1, 1])" to "native decode + bicubic"
   (:func:`rewards_grain`: it scores the grained baseline better by more than two grain draws differ), nor
   the baseline plus grain as strong as a judged decoder's own excess noise when that is above σ = 0.1
   (:meth:`pid.eval.panel.Panel.matched_grain`); a measure that does is reported as "excluded from
   verdicts: rewards grain at this size". What the σ = 0.1 check excludes in one comparison holds for the
   related comparisons on the same crops (each σ; each row pair of `make eval`,
   :func:`pid.eval.panel.combine_checks`);
2. **the sample floor is met** (:attr:`Measure.min_samples`; FID on 2,048-d Inception features is biased
   below 10,000 samples, Heusel et al. 2017, §"FID": it is shown and never ranks, KID ranks instead);
3. **the 95 % interval of the paired difference excludes no difference**: a seeded bootstrap over the
   crops (the same resampled crops for both decoders, so the difference is paired; Efron & Tibshirani
   1993, percentile interval). Per-crop measures resample their per-crop values; set measures (KID,
   seams) are recomputed on each resample from per-crop statistics.

Otherwise the line says "not separable with N (need about M)", M being the sample size at which the
interval's half-width would shrink (∝ 1/√N) to the observed difference. Verdicts are given per family —
fidelity to the input, realism, artefacts — never one headline for all (:func:`family_lines`).

Evidence for one decoder on one measure is an :class:`Evidence`: per-crop values, or a set statistic of
per-crop resampling weights. The measures pid ships are built by :mod:`pid.eval.panel`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch

Better = Literal["higher", "lower", "zero"]
FAMILIES = ("fidelity", "realism", "artefacts")
FAMILY_TITLES = {"fidelity": "fidelity to the input", "realism": "realism", "artefacts": "artefacts"}

#: Grain of the check: Gaussian noise of this standard deviation on images in [-1, 1].
GRAIN_SIGMA = 0.1
CONFIDENCE = 0.95
RESAMPLES = 2000
EXCLUDED = "excluded from verdicts: rewards grain at this size"


@dataclass(frozen=True)
class Measure:
    """One measure a verdict may rest on.

    ``better``: "higher", "lower" or "zero" (closest to 0, e.g. the log of a ratio to the ground truth's).
    ``min_samples``: the floor below which it never names a winner, counted in ``unit``; ``floor_reason``
    says why. ``show`` maps a stored value to the number printed (e.g. exp of a log ratio).
    """

    key: str
    label: str
    family: str
    better: Better
    fmt: str = ".3g"
    min_samples: int = 10
    unit: str = "crops"
    floor_reason: str = "a bootstrap interval needs at least this many"
    show: Callable[[float], float] | None = None
    resamples: int = RESAMPLES  # bootstrap resamples (fewer for costly set statistics such as FID)

    def format(self, value: float) -> str:
        if value is None or not math.isfinite(value):
            return "–"
        return format(self.show(value) if self.show else value, self.fmt)

    def gain(self, a, b):
        """How much better A is than B (> 0: A better), elementwise on floats or tensors."""
        if self.better == "higher":
            return a - b
        if self.better == "lower":
            return b - a
        return abs(b) - abs(a)


@dataclass
class Evidence:
    """One decoder's scores on one measure over ``n`` resampling units (crops).

    Either ``values`` (n,) per unit (the reported value is their mean over finite units), or ``stat``,
    a vectorised set statistic: (R, n) non-negative unit weights → (R,) values (weights of ones give the
    reported value). ``samples`` is what the floor counts (e.g. patches), default n.
    """

    n: int
    values: torch.Tensor | None = None
    stat: Callable[[torch.Tensor], torch.Tensor] | None = None
    samples: int | None = None
    note: str = ""

    def __post_init__(self):
        if (self.values is None) == (self.stat is None):
            raise ValueError("Evidence takes per-unit values or a set statistic, not both or neither")
        if self.values is not None:
            self.values = torch.as_tensor(self.values, dtype=torch.float64).flatten()
            if len(self.values) != self.n:
                raise ValueError(f"Evidence: {len(self.values)} values for n = {self.n} units")
        self.samples = self.n if self.samples is None else int(self.samples)

    def finite(self) -> torch.Tensor:
        if self.values is None:
            return torch.ones(self.n, dtype=torch.bool)
        return torch.isfinite(self.values)

    def evaluate(self, weights: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(R,) values under (R, n) unit weights; units outside ``mask`` get weight 0."""
        w = weights.double()
        if mask is not None:
            w = w * mask.double()
        if self.values is not None:
            v = torch.where(torch.isfinite(self.values), self.values, torch.zeros_like(self.values))
            return (w @ v) / w.sum(1).clamp_min(1e-12)
        return self.stat(w)

    def value(self, mask: torch.Tensor | None = None) -> float:
        return float(self.evaluate(torch.ones(1, self.n), mask)[0])


@dataclass
class Outcome:
    """The verdict of one measure between two decoders (``a`` vs ``b``)."""

    measure: Measure
    a: str
    b: str
    value_a: float
    value_b: float
    n: int
    samples: int
    status: Literal["ahead", "not separable", "below floor", "excluded"]
    winner: str | None = None
    interval: tuple[float, float] | None = None  # of gain (A better > 0), in stored units
    need: int | None = None  # crops for the interval to exclude 0 at the observed gain
    dropped: int = 0  # units left out for a non-finite value (either decoder)

    def text(self) -> str:
        m = self.measure
        vals = f"{m.format(self.value_a)} vs {m.format(self.value_b)}"
        drop = f"; {self.dropped} crop(s) without a finite value left out" if self.dropped else ""
        if self.status == "excluded":
            return f"{m.label}: {EXCLUDED} ({vals})"
        if self.status == "below floor":
            return (f"{m.label}: not ranked with {self.samples} {m.unit} ({vals}): {m.floor_reason} "
                    f"(needs {m.min_samples:,}){drop}")
        lo, hi = self.interval
        ci = f"{int(CONFIDENCE * 100)} % interval of the gain [{lo:+.3g}, {hi:+.3g}], {self.counted()}"
        if self.status == "ahead":
            return f"{m.label}: {self.winner} ahead ({vals}; {ci}){drop}"
        need = f"need about {self.need:,} crops" if self.need else "no difference observed"
        return f"{m.label}: not separable with {self.counted()} ({need}; {vals}){drop}"

    def counted(self) -> str:
        """"30 crops", or "30 crops, 120 patches" when the measure counts other samples."""
        unit = self.measure.unit
        return f"{self.n} crops" + ("" if unit == "crops" else f", {self.samples} {unit}")

    def as_dict(self) -> dict:
        return {"measure": self.measure.key, "family": self.measure.family, "a": self.a, "b": self.b,
                "value_a": self.value_a, "value_b": self.value_b, "n": self.n, "samples": self.samples,
                "status": self.status, "winner": self.winner, "interval": self.interval, "need": self.need,
                "dropped": self.dropped, "text": self.text()}


def bootstrap_weights(n: int, resamples: int = RESAMPLES, seed: int = 0) -> torch.Tensor:
    """(resamples, n) float64 counts of each unit in a seeded bootstrap resample (multinomial, n draws)."""
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randint(0, n, (resamples, n), generator=g)
    return torch.zeros(resamples, n, dtype=torch.float64).scatter_add_(
        1, idx, torch.ones(resamples, n, dtype=torch.float64))


def compare(measure: Measure, a: Evidence, b: Evidence, names: tuple[str, str] = ("A", "B"),
            excluded: bool = False, seed: int = 0, resamples: int | None = None) -> Outcome:
    """Apply the rule (module docstring) to one measure: ``a`` and ``b`` score the same units.

    Raises ValueError when they do not (different n)."""
    if a.n != b.n:
        raise ValueError(f"{measure.key}: the two decoders were scored on {a.n} and {b.n} crops; a paired "
                         "verdict needs the same crops")
    mask = a.finite() & b.finite()
    dropped = int((~mask).sum())
    va, vb = a.value(mask), b.value(mask)
    n = int(mask.sum())
    samples = min(a.samples, b.samples) * n // max(a.n, 1)
    base = dict(measure=measure, a=names[0], b=names[1], value_a=va, value_b=vb, n=n, samples=samples,
                dropped=dropped)
    if excluded:
        return Outcome(status="excluded", **base)
    if n < 2 or samples < measure.min_samples:
        return Outcome(status="below floor", **base)
    w = bootstrap_weights(a.n, resamples or measure.resamples, seed)
    gains = measure.gain(a.evaluate(w, mask), b.evaluate(w, mask))
    gains = gains[torch.isfinite(gains)]
    alpha = (1 - CONFIDENCE) / 2
    lo, hi = (float(torch.quantile(gains, q)) for q in (alpha, 1 - alpha))
    point = float(measure.gain(torch.tensor(va), torch.tensor(vb)))
    if lo > 0 or hi < 0:
        return Outcome(status="ahead", winner=names[0] if lo > 0 else names[1], interval=(lo, hi), **base)
    half = (hi - lo) / 2
    need = None
    if point != 0 and half > 0:  # the half-width shrinks as 1/√n
        need = max(n + 1, math.ceil(n * (half / abs(point)) ** 2))
    return Outcome(status="not separable", interval=(lo, hi), need=need, **base)


def add_grain(images: torch.Tensor, sigma: float = GRAIN_SIGMA, seed: int = 0) -> torch.Tensor:
    """``images`` (B, 3, H, W) in [-1, 1] plus seeded Gaussian noise of std ``sigma``, clamped to [-1, 1]."""
    g = torch.Generator().manual_seed(int(seed))
    noise = torch.randn(images.shape, generator=g, dtype=torch.float32).to(images.device, images.dtype)
    return (images + sigma * noise).clamp(-1, 1)


def rewards_grain(measure: Measure, baseline: Evidence, grained: Evidence, grained_again: Evidence) -> bool:
    """True when ``measure`` prefers the baseline plus grain to the baseline on the same crops: it scores
    the grained baseline better than the baseline by more than two independent grain draws differ from each
    other (``grained`` and ``grained_again``). A measure that grain leaves unchanged in expectation (the
    seams measure) then passes, one that moves towards grain fails, and no interval lets a small sample
    hide a preference."""
    mask = baseline.finite() & grained.finite() & grained_again.finite()
    if not bool(mask.any()):
        return False
    base, g1, g2 = (torch.tensor(e.value(mask)) for e in (baseline, grained, grained_again))
    return float(measure.gain(g1, base)) > abs(float(measure.gain(g1, g2)))


@dataclass
class Verdicts:
    """Every measure's outcome for one pair of decoders, and the measures excluded for rewarding grain."""

    a: str
    b: str
    outcomes: list[Outcome] = field(default_factory=list)

    def lines(self, indent: str = "  ") -> list[str]:
        """One headline per family, then one line per measure."""
        out = family_lines(self.outcomes, self.a, self.b)
        return [f"{indent}{line}" for line in out] + [f"{indent}  · {o.text()}" for o in self.outcomes]

    def winners(self) -> dict[str, str | None]:
        return {o.measure.key: o.winner for o in self.outcomes}

    def as_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "families": family_lines(self.outcomes, self.a, self.b),
                "measures": [o.as_dict() for o in self.outcomes]}


def judge(measures: list[Measure], a: dict[str, Evidence], b: dict[str, Evidence], names: tuple[str, str],
          excluded: set[str] = frozenset(), seed: int = 0) -> Verdicts:
    """:func:`compare` for every measure both ``a`` and ``b`` have evidence for (in ``measures`` order)."""
    out = Verdicts(*names)
    for m in measures:
        if m.key in a and m.key in b:
            out.outcomes.append(compare(m, a[m.key], b[m.key], names, m.key in excluded, seed))
    return out


def grain_exclusions(measures: list[Measure], baseline: dict[str, Evidence], grained: dict[str, Evidence],
                     grained_again: dict[str, Evidence]) -> set[str]:
    """Keys of the measures that prefer the baseline plus grain to the baseline (:func:`rewards_grain`;
    two grain draws of the same baseline)."""
    return {m.key for m in measures if m.key in baseline and m.key in grained and m.key in grained_again
            and rewards_grain(m, baseline[m.key], grained[m.key], grained_again[m.key])}


def family_lines(outcomes: list[Outcome], a: str, b: str) -> list[str]:
    """One line per family that has measures: who is ahead on which, or that the data cannot separate."""
    lines = []
    for family in FAMILIES:
        outs = [o for o in outcomes if o.measure.family == family]
        if not outs:
            continue
        # each winning measure with the 95 % interval of A's gain, so a headline stands on its own
        ahead = {name: [f"{o.measure.label} [{o.interval[0]:+.3g}, {o.interval[1]:+.3g}]" for o in outs
                        if o.winner == name] for name in (a, b)}
        ranked = [o for o in outs if o.winner]
        open_ = [o for o in outs if o.status in ("not separable", "below floor")]
        excluded = [o.measure.label for o in outs if o.status == "excluded"]
        title = FAMILY_TITLES[family]
        if ahead[a] and ahead[b]:
            head = f"mixed: {a} ahead on {', '.join(ahead[a])}; {b} ahead on {', '.join(ahead[b])}"
        elif ahead[a] or ahead[b]:
            who = a if ahead[a] else b
            head = f"{who} ahead on {', '.join(ahead[who])}"
            if open_:
                head += f"; not separable on {', '.join(o.measure.label for o in open_)}"
        elif open_ and all(o.status == "below floor" for o in open_):
            head = (f"not ranked with {max(o.n for o in open_)} crops (too few: the measures need at least "
                    f"{min(o.measure.min_samples for o in open_):,})")
        elif open_:
            needs = [o.need for o in open_ if o.need]
            head = (f"not separable with {max(o.n for o in open_)} crops"
                    + (f" (need about {min(needs):,} for the closest measure)" if needs else ""))
        else:
            head = "no measure left to judge"
        if ranked:
            head += f" ({ranked[0].counted()}; 95 % intervals of {a}'s gain)"
        if excluded:
            head += f" [{', '.join(excluded)}: {EXCLUDED}]"
        lines.append(f"{title}: {head}")
    return lines
