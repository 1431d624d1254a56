"""Learning-rate factor for ``LambdaLR``: linear warm-up, then constant or cosine decay."""

from __future__ import annotations

import math

__all__ = ["DECAYS", "LRFactor"]

#: What follows the warm-up.
DECAYS = ("constant", "cosine")


class LRFactor:
    """``factor(step)`` multiplying the base learning rate (picklable, so checkpoints keep it).

    warm-up: ``(step + 1) / warmup`` for the first ``warmup`` steps;
    then "constant": 1, or "cosine": ``r + (1 − r)·½(1 + cos(π·p))`` with ``p`` the fraction of the
    steps after the warm-up that have passed (``p = 1`` at ``total``) and ``r = min_ratio``.
    """

    def __init__(self, warmup: int = 0, decay: str = "constant", total: int = 0, min_ratio: float = 0.0):
        if decay not in DECAYS:
            raise ValueError(f"decay must be one of {DECAYS}, got {decay!r}")
        if decay == "cosine" and total <= max(warmup, 0):
            raise ValueError(f"cosine decay needs more total steps ({total}) than warm-up steps ({warmup})")
        if not 0.0 <= min_ratio <= 1.0:
            raise ValueError(f"min_ratio must be in [0, 1], got {min_ratio}")
        self.warmup = max(int(warmup), 0)
        self.decay = decay
        self.total = int(total)
        self.min_ratio = float(min_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.decay == "constant":
            return 1.0
        progress = min(1.0, (step - self.warmup) / max(self.total - self.warmup, 1))
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
