"""Aspect-ratio buckets (docs/method.md §3): every batch has one (H, W), and images are never upsampled.

Single level (the paper's 2K buckets, ``base_size=2048``, sides multiple of 64)::

    1:1 2048×2048   4:3 2304×1728   3:4 1728×2304   16:9 2688×1536   9:16 1536×2688

Multi level (the 2K–4K variant): the same five aspects at base sizes 2048, 2304, …, 4096.

Sizes are config, not code: ``base_size`` scales the table for tiny runs (e.g. ``base_size=128,
multiple=32`` gives 128², 128×96, 96×128, 160×96, 96×160). A scaled size is the multiple-of-
``multiple`` grid point nearest the scaled paper size, weighing aspect error twice as much as
area error; at ``base_size=2048, multiple=64`` this reproduces the table exactly.

An image of W×H can use bucket (w, h) only if ``w <= W and h <= H`` (resizing *down* to cover
the bucket, or cropping, never needs upsampling). Among the fitting buckets the nearest aspect
(in log space) wins; at equal aspect the largest level, or a random one (``level_choice``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

# (name, width, height) at the paper's 2048 base (docs/method.md §3).
PAPER_BUCKETS_2048 = (
    ("1:1", 2048, 2048),
    ("4:3", 2304, 1728),
    ("3:4", 1728, 2304),
    ("16:9", 2688, 1536),
    ("9:16", 1536, 2688),
)
PAPER_BASE = 2048


@dataclass(frozen=True, order=True)
class Bucket:
    """One batch shape: ``width`` × ``height`` pixels.

    ``name`` is the aspect label, ``level`` the base size.
    """

    height: int
    width: int
    name: str = ""
    level: int = 0

    @property
    def aspect(self) -> float:
        return self.width / self.height

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W), the tensor layout."""
        return self.height, self.width

    @property
    def label(self) -> str:
        return f"{self.width}x{self.height}"


def snap_size(width: float, height: float, multiple: int, aspect_weight: float = 2.0) -> tuple[int, int]:
    """The (w, h) on the ``multiple`` grid closest to (width, height).

    The aspect error weighs ``aspect_weight``× in the cost.
    """
    best, best_cost = None, math.inf
    ar, area = math.log(width / height), math.log(width * height)
    for kw in range(max(1, math.floor(width / multiple) - 2), math.ceil(width / multiple) + 3):
        for kh in range(max(1, math.floor(height / multiple) - 2), math.ceil(height / multiple) + 3):
            w, h = kw * multiple, kh * multiple
            cost = aspect_weight * abs(math.log(w / h) - ar) + abs(math.log(w * h) - area)
            if cost < best_cost - 1e-12:
                best, best_cost = (w, h), cost
    return best


def single_level(base_size: int = PAPER_BASE, multiple: int = 64) -> list[Bucket]:
    """The five paper buckets scaled to ``base_size`` (sides multiple of ``multiple``)."""
    out = []
    for name, w, h in PAPER_BUCKETS_2048:
        sw, sh = snap_size(w * base_size / PAPER_BASE, h * base_size / PAPER_BASE, multiple)
        out.append(Bucket(sh, sw, name, base_size))
    return _unique(out)


def multi_level(
    min_size: int = 2048, max_size: int = 4096, step: int = 256, multiple: int = 64, scale: float = 1.0
) -> list[Bucket]:
    """The 2K–4K variant: ``single_level`` at every base size ``min_size…max_size`` (step ``step``).

    ``scale`` shrinks every level for tiny runs (e.g. 1/16 turns 2048…4096 into 128…256).
    """
    levels = range(min_size, max_size + 1, step)
    out = []
    for level in levels:
        base = max(multiple, round(level * scale))
        out += single_level(base, multiple)
    return _unique(out)


def _unique(buckets: Sequence[Bucket]) -> list[Bucket]:
    seen, out = set(), []
    for b in buckets:
        if (b.width, b.height) not in seen:
            seen.add((b.width, b.height))
            out.append(b)
    return out


class BucketSet:
    """A list of buckets and the rule that assigns an image size to one of them."""

    def __init__(self, buckets: Sequence[Bucket], level_choice: str = "largest"):
        if not buckets:
            raise ValueError("a BucketSet needs at least one bucket")
        if level_choice not in ("largest", "random"):
            raise ValueError(f"level_choice must be 'largest' or 'random', not {level_choice!r}")
        self.buckets = list(buckets)
        self.level_choice = level_choice

    def __len__(self) -> int:
        return len(self.buckets)

    def __iter__(self):
        return iter(self.buckets)

    @property
    def min_area_bucket(self) -> Bucket:
        return min(self.buckets, key=lambda b: b.width * b.height)

    def fitting(self, width: int, height: int) -> list[Bucket]:
        """Buckets an image of ``width`` × ``height`` can fill without upsampling."""
        return [b for b in self.buckets if b.width <= width and b.height <= height]

    def assign(self, width: int, height: int, rng: random.Random | None = None) -> Bucket | None:
        """The bucket for an image, or None if it is too small for all of them (drop it)."""
        fits = self.fitting(width, height)
        if not fits:
            return None
        ar = math.log(width / height)
        best = min(abs(math.log(b.aspect) - ar) for b in fits)
        near = [b for b in fits if abs(math.log(b.aspect) - ar) <= best + 1e-9]
        if self.level_choice == "random" and rng is not None and len(near) > 1:
            return near[rng.randrange(len(near))]
        return max(near, key=lambda b: b.width * b.height)


def make_buckets(
    kind: str = "single",
    base_size: int = PAPER_BASE,
    multiple: int = 64,
    min_size: int = 2048,
    max_size: int = 4096,
    step: int = 256,
    level_choice: str = "largest",
) -> BucketSet:
    """Bucket set from config. ``kind``: ``single`` (five buckets at ``base_size``), ``multi``
    (2K–4K levels, scaled by ``base_size / 2048``) or ``square`` (one ``base_size``² bucket)."""
    if kind == "single":
        return BucketSet(single_level(base_size, multiple), level_choice)
    if kind == "multi":
        return BucketSet(
            multi_level(min_size, max_size, step, multiple, base_size / PAPER_BASE), level_choice
        )
    if kind == "square":
        side = max(multiple, round(base_size / multiple) * multiple)
        return BucketSet([Bucket(side, side, "1:1", base_size)], level_choice)
    raise ValueError(f"unknown bucket kind {kind!r}: choose single, multi or square")
