"""Latency and peak memory of one decode method: warm-up, then N timed runs.

GPU: every run is bracketed by ``torch.cuda.synchronize()``; peak memory is
``torch.cuda.max_memory_allocated`` after a reset (what the method itself needs on the device).
CPU: peak memory is the process's resident set size, sampled every ``interval`` s by a thread while
the runs execute (``/proc/self/statm``), reported with the process's lifetime peak (``ru_maxrss``).
"""

from __future__ import annotations

import resource
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch


@dataclass
class Timing:
    median_ms: float
    p10_ms: float
    p90_ms: float
    min_ms: float
    max_ms: float
    runs: int
    peak_mem_mb: float
    mem_kind: str  # "cuda_max_allocated" | "process_peak_rss"

    def as_dict(self) -> dict:
        return asdict(self)


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:  # not Linux: lifetime peak is all we have
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _RSSSampler(threading.Thread):
    def __init__(self, interval: float = 0.005):
        super().__init__(daemon=True)
        self.interval, self.peak, self._halt = interval, _rss_mb(), threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak = max(self.peak, _rss_mb())
            self._halt.wait(self.interval)

    def stop(self) -> float:
        self._halt.set()
        self.join()
        return max(self.peak, _rss_mb())


def _quantile(values: list[float], q: float) -> float:
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def measure(fn: Callable[[], object], device: str | torch.device = "cpu", warmup: int = 1,
            runs: int = 3) -> Timing:
    """Time ``fn()`` (which runs one decode) ``runs`` times after ``warmup`` untimed calls."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        sampler = None
    else:
        sampler = _RSSSampler()
        sampler.start()
    times = []
    try:
        for _ in range(max(1, runs)):
            if cuda:
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize(device)
            times.append((time.perf_counter() - t0) * 1000.0)
    finally:
        peak = sampler.stop() if sampler is not None else 0.0
    if cuda:
        peak, kind = torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    else:
        kind = "process_peak_rss"
    return Timing(statistics.median(times), _quantile(times, 0.1), _quantile(times, 0.9), min(times), max(times),
                  len(times), float(peak), kind)
