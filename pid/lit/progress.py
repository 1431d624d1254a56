"""Training progress over the whole run (not per epoch): a bar with ETA in a terminal, plain lines otherwise.

Lightning's bars count batches per epoch; runs here are sized in optimizer steps (``trainer.max_steps``)
over streamed data whose epochs are arbitrary, so their ETA is the epoch's, not the run's.
:class:`StepProgress` counts ``trainer.global_step`` against ``max_steps``:

* stdout is a terminal: a tqdm bar ``step/max_steps [elapsed<ETA, s/it]`` with the latest loss;
* otherwise (``make train | cat``, a log file, CI): a line every ``every_s`` seconds, e.g.
  ``step 120/400 (30%) | 0.71 s/step | elapsed 1:25 | ETA 3:19 | train/loss 0.412``.

At the start it says what the run trains on (device, its name on CUDA, CPU threads, precision).
"""

from __future__ import annotations

import logging
import sys
import time

import torch
from lightning.pytorch.callbacks import ProgressBar

log = logging.getLogger(__name__)


def _clock(seconds: float) -> str:
    seconds = max(int(round(seconds)), 0)
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def describe_device(device: torch.device, precision) -> str:
    """"cuda:0 (NVIDIA H200), precision bf16-mixed" / "cpu (2 threads), precision 32-true"."""
    if device.type == "cuda":
        what = f"{device} ({torch.cuda.get_device_name(device)})"
    else:
        n = torch.get_num_threads()
        what = f"{device.type} ({n} thread{'' if n == 1 else 's'})"
        if torch.cuda.is_available():
            what += "; a CUDA device is present but not used (trainer.accelerator)"
    return f"{what}, precision {precision}"


class StepProgress(ProgressBar):
    """Progress of ``trainer.global_step`` against ``trainer.max_steps`` (see the module docstring).

    Args:
        every_s: seconds between progress lines when stdout is not a terminal.
        bar: "auto" (a bar in a terminal, lines otherwise), "always" or "never" (always lines).
        metric: the logged value shown with the progress.
    """

    def __init__(self, every_s: float = 30.0, bar: str = "auto", metric: str = "train/loss"):
        super().__init__()
        if bar not in ("auto", "always", "never"):
            raise ValueError(f"bar must be auto, always or never, got {bar!r}")
        self.every_s = float(every_s)
        self.bar_mode = bar
        self.metric = metric
        self._enabled = True
        self._bar = None
        self._t0 = 0.0
        self._step0 = 0
        self._last_print = 0.0

    # ProgressBar's interface
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled and self.trainer.is_global_zero

    def _use_bar(self) -> bool:
        return self.bar_mode == "always" or (self.bar_mode == "auto" and sys.stdout.isatty())

    def _total(self, trainer) -> int | None:
        return trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None

    def _metric(self, trainer) -> str:
        value = trainer.callback_metrics.get(self.metric)
        return f"{self.metric} {float(value):.4g}" if value is not None else ""

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        total = self._total(trainer)
        self._t0 = self._last_print = time.monotonic()
        self._step0 = trainer.global_step
        log.info("training %s steps on %s", total if total is not None else "until stopped",
                 describe_device(pl_module.device, trainer.precision))
        if self.is_enabled and self._use_bar():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=trainer.global_step, desc="train", unit="step",
                             dynamic_ncols=True, file=sys.stdout)

    def line(self, trainer) -> str:
        """The progress line for the current step."""
        step, total = trainer.global_step, self._total(trainer)
        elapsed = time.monotonic() - self._t0
        done = step - self._step0
        per = elapsed / done if done else float("nan")
        parts = [f"step {step}/{total} ({100 * step / total:.0f}%)" if total else f"step {step}",
                 f"{per:.2f} s/step" if done else "", f"elapsed {_clock(elapsed)}"]
        if total and done:
            parts.append(f"ETA {_clock(per * (total - step))}")
        parts.append(self._metric(trainer))
        return " | ".join(p for p in parts if p)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.is_enabled:
            return
        if self._bar is not None:
            self._bar.n = trainer.global_step
            metric = self._metric(trainer)
            if metric:
                self._bar.set_postfix_str(metric, refresh=False)
            self._bar.refresh()
            return
        now = time.monotonic()
        if now - self._last_print >= self.every_s:
            self._last_print = now
            print(self.line(trainer), flush=True)

    def on_validation_start(self, trainer, pl_module) -> None:
        if self.is_enabled and self._bar is None and not trainer.sanity_checking:
            print(f"step {trainer.global_step}: validating", flush=True)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._bar is not None:
            self._bar.n = trainer.global_step
            self._bar.close()
            self._bar = None
        if self.is_enabled:
            stopped = trainer.global_step < (trainer.max_steps or -1)  # max_steps -1: no limit
            print(self.line(trainer) + (" | stopped" if stopped else " | done"), flush=True)
