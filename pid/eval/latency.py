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
from collections.abc import Callable
from dataclasses import asdict, dataclass

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
    return Timing(statistics.median(times), _quantile(times, 0.1), _quantile(times, 0.9),
                  min(times), max(times), len(times), float(peak), kind)


def latency_latent(z: torch.Tensor, size: int | None, decoder, batch_size: int = 1) -> torch.Tensor:
    """A latent of the latency batch size for output ``size`` (None: the evaluation set's first latent)."""
    from pid.utils.errors import PiDConfigError

    if size is None:
        return z[:1].repeat(batch_size, 1, 1, 1)
    cell = decoder.sr_scale * decoder.latent.down_factor
    if size % cell:
        raise PiDConfigError(f"latency.sizes: {size} is not a multiple of {cell} "
                             "(sr_scale × latent down factor)")
    return torch.randn(batch_size, z.shape[1], size // cell, size // cell,
                       generator=torch.Generator().manual_seed(0))


def time_method(run: Callable, z: torch.Tensor, decoder, cfg, device) -> dict:
    """Latency columns of one method's row for every output size of ``cfg`` (the ``latency:`` section):
    ``latency_ms[@size]``, ``latency_p10_ms``/``latency_p90_ms``, ``peak_mem_mb``, ``mem_kind`` and
    ``latency_spread``; the first size's values also under the plain keys."""
    sizes = list(cfg.sizes or [None])
    row = {}
    for size in sizes:
        zs = latency_latent(z, size, decoder, int(cfg.batch_size))
        t = measure(lambda zs=zs: run(zs.to(device), 0.0, torch.Generator().manual_seed(0)), device,
                    int(cfg.warmup), int(cfg.runs))
        suffix = "" if size is None else f"@{size}"
        row[f"latency_ms{suffix}"] = t.median_ms
        row[f"latency_p10_ms{suffix}"], row[f"latency_p90_ms{suffix}"] = t.p10_ms, t.p90_ms
        row[f"peak_mem_mb{suffix}"], row["mem_kind"] = t.peak_mem_mb, t.mem_kind
    if sizes[0] is not None:  # the first size is the one in the main table
        for k in ("latency_ms", "latency_p10_ms", "latency_p90_ms", "peak_mem_mb"):
            row[k] = row[f"{k}@{sizes[0]}"]
    row["latency_spread"] = f"{row['latency_p10_ms']:.1f}–{row['latency_p90_ms']:.1f}"
    return row
