"""Runs that survive preemption and bad steps.

* ``AtomicCheckpointIO``: every checkpoint is written to ``<path>.tmp-<pid>``, fsynced, then renamed over
  the target (``os.replace`` is atomic on POSIX file systems), so a run killed mid-write (SIGKILL, node
  failure, out of quota) leaves the previous ``last.ckpt`` intact, never a truncated one.
* ``NonFiniteGuard``: a NaN/Inf loss skips the step (no backward, no weight change), NaN/Inf gradients
  under a finite loss drop the update; both are counted (``train/nonfinite_skipped``), and
  ``max_consecutive`` bad steps in a row, of either kind, stop the run with a clear message.
  Under DDP the decision is all-reduced so every rank skips together (no hang).
  The module asks it through :func:`guard_loss` (PiDModule.training_step does).
* ``PreemptionHandler``: SIGTERM / SIGUSR1 / SIGUSR2 (what SLURM sends before a time limit or
  preemption with ``--signal=USR1@90``; submitit uses USR2) set a flag; at the next batch boundary every
  rank agrees, ``checkpoints/last.ckpt`` is saved (atomically), the SLURM job is requeued
  (``scontrol requeue``) when running under SLURM, and training stops without the end-of-run export.
  A handler installed before ours (submitit's, under ``hydra/launcher=slurm``) is called after the save
  instead, and requeues as usual. Re-running the same command resumes (pid.utils.resume).
* DataLoader workers outlive a job-wide signal: a cluster (SLURM at a time limit or preemption, ``kill`` of
  the process group) signals *every* process of the job, workers included. PyTorch's worker dies of a
  SIGTERM that its parent did not send (and of SIGUSR1/SIGUSR2, whose default action is to terminate), and
  the main process then raises "DataLoader worker ... is killed by signal" from its SIGCHLD handler,
  wherever it is, before it could save. :func:`shield_dataloader_worker` (run first in every worker through
  :class:`ShieldedWorkerInit`, which ``PreemptionHandler`` puts on the datamodule's loaders) keeps the
  worker serving through those signals; the main process saves, stops and shuts the workers down itself.
  A SIGTERM from the worker's own parent (the DataLoader's shutdown, multiprocessing's exit) still ends it
  at once, quietly, as PyTorch's own handler does.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------- atomic saves
class CheckpointWriteError(OSError):
    """A checkpoint could not be written (full disk, quota, file-size limit); the previous file is kept."""


def _write_failure_message(path: Path, err: BaseException) -> str:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    try:
        free = f"{shutil.disk_usage(path.parent).free / 2**20:,.0f} MiB free on {path.parent}"
    except OSError:
        free = f"free space on {path.parent} unknown"
    kept = f"the previous {path.name} is kept" if path.exists() else "no earlier checkpoint was there"
    return (f"could not write checkpoint {path} ({reason}); {free}; {kept}. A full disk or quota is the "
            "usual cause: free space, or write the run elsewhere (paths.log_dir=... for new runs, "
            "callbacks.model_checkpoint.dirpath=... for checkpoints only), then re-run the same command to "
            "resume.")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over ``path``.

    A failed write (PyTorch reports a full disk as ``unexpected pos`` or ``file write failed``) raises
    :class:`CheckpointWriteError` naming the file and the free space; ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        try:
            with open(tmp, "wb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
        except (OSError, RuntimeError) as err:
            raise CheckpointWriteError(_write_failure_message(path, err)) from err
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning CheckpointIO whose saves are atomic (tmp file + rename).

    Remote URLs fall back to Lightning.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        if "://" in str(path) and not str(path).startswith("file://"):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, str(path).removeprefix("file://"))


# ---------------------------------------------------------------------------------------- NaN / Inf
class NonFiniteLossError(RuntimeError):
    pass


def _any_rank(trainer: pl.Trainer | None, flag: bool) -> bool:
    if trainer is None or trainer.world_size <= 1:
        return flag
    return bool(trainer.strategy.reduce_boolean_decision(flag, all=False))


class NonFiniteGuard(pl.Callback):
    """Skip steps whose loss is NaN/Inf; stop after ``max_consecutive`` in a row.

    Args:
        max_consecutive: bad steps in a row that stop the run (NonFiniteLossError).
        check_grads: also drop the update when the gradients are non-finite although the loss is not
            (the gradients are cleared before the optimiser step, so the weights do not change).
    """

    def __init__(self, max_consecutive: int = 10, check_grads: bool = True):
        self.max_consecutive = int(max_consecutive)
        self.check_grads = check_grads
        self.skipped = 0
        self.consecutive = 0
        self._bad_this_batch = False

    def state_dict(self) -> dict:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state: dict) -> None:
        self.skipped = int(state.get("skipped", 0))
        self.consecutive = int(state.get("consecutive", 0))

    def _bad(self, trainer: pl.Trainer, pl_module: pl.LightningModule, what: str) -> None:
        self._bad_this_batch = True
        self.skipped += 1
        self.consecutive += 1
        log.warning("non-finite %s at step %d: step skipped (%d in a row, %d in total)", what,
                    trainer.global_step, self.consecutive, self.skipped)
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteLossError(
                f"{self.consecutive} consecutive training steps had a non-finite {what} (NaN/Inf) at step "
                f"{trainer.global_step}; stopping. Lower model.optimizer.lr, raise model.warmup_steps, use "
                "trainer.precision=32-true or bf16-mixed instead of 16-mixed, check the data, or resume "
                "from an earlier checkpoint (callbacks.nonfinite.max_consecutive sets this limit).")

    def check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor):
        """The loss to backpropagate, or None to skip this step (decided on all ranks together)."""
        bad = _any_rank(trainer, not bool(torch.isfinite(loss.detach()).all()))
        if bad:
            self._bad(trainer, pl_module, "loss")
            return None
        return loss  # the run of bad steps ends only when the whole step went through (on_train_batch_end)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not self.check_grads:
            return
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return
        local = [g.to_local() if hasattr(g, "to_local") else g for g in grads]  # FSDP2 DTensors: local shard
        finite = bool(torch.isfinite(torch.stack(torch._foreach_norm(local))).all())
        if _any_rank(trainer, not finite):
            for g in optimizer.param_groups:
                for p in g["params"]:
                    p.grad = None  # AdamW skips parameters without gradients: the weights stay as they are
            self._bad(trainer, pl_module, "gradient")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._bad_this_batch = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._bad_this_batch:
            self.consecutive = 0  # a finite loss *and* finite gradients: the step was applied
        if trainer.global_step % max(trainer.log_every_n_steps, 1) == 0 or self.skipped:
            pl_module.log("train/nonfinite_skipped", float(self.skipped), on_step=True, on_epoch=False,
                          batch_size=1, rank_zero_only=True)


def find_guard(trainer: pl.Trainer | None) -> NonFiniteGuard | None:
    if trainer is None:
        return None
    return next((cb for cb in trainer.callbacks if isinstance(cb, NonFiniteGuard)), None)


def guard_loss(module: pl.LightningModule, loss: torch.Tensor):
    """What ``training_step`` should return: the loss, or None when a NonFiniteGuard says skip.

    Without the callback the loss is returned unchanged (the old behaviour)."""
    trainer = getattr(module, "_trainer", None)
    guard = find_guard(trainer)
    return loss if guard is None else guard.check(trainer, module, loss)


# ---------------------------------------------------------------------------------------- preemption
PREEMPTION_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2")


def _signal_numbers(signals) -> set[int]:
    return {int(getattr(signal, s)) if isinstance(s, str) else int(s) for s in signals
            if not isinstance(s, str) or hasattr(signal, s)}


def shield_dataloader_worker(signals=PREEMPTION_SIGNALS) -> bool:
    """Keep this DataLoader worker process alive through job-wide preemption signals.

    Call it first thing in a worker (``worker_init_fn``; :class:`ShieldedWorkerInit` does). ``signals`` (names
    or numbers) are blocked in the worker and taken by a daemon thread with ``sigwaitinfo``: SIGTERM sent by
    the worker's parent (PyTorch's DataLoader shutdown, multiprocessing at exit) or arriving after the parent
    is gone ends the worker at once with status 0, as PyTorch's own SIGTERM handler does; every other one is
    dropped, so the main process (which gets the same signal) can finish its step, save and shut the workers
    down. Threads the worker starts later inherit the block, and so do programs it executes.

    Returns:
        True when the worker was shielded; False where ``sigwaitinfo`` does not exist (macOS, Windows): there
        only SIGUSR1/SIGUSR2 are ignored, and a SIGTERM from elsewhere still ends the worker.
    """
    numbers = _signal_numbers(signals)
    if not (hasattr(signal, "pthread_sigmask") and hasattr(signal, "sigwaitinfo")):
        for s in numbers - {int(signal.SIGTERM)}:
            signal.signal(s, signal.SIG_IGN)
        return False
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, numbers)

    def take_signals() -> None:
        while True:
            info = signal.sigwaitinfo(numbers)
            if info.si_signo == signal.SIGTERM and (info.si_pid == parent or os.getppid() != parent):
                os._exit(0)

    threading.Thread(target=take_signals, name="pid-worker-signals", daemon=True).start()
    return True


class ShieldedWorkerInit:
    """A DataLoader ``worker_init_fn``: :func:`shield_dataloader_worker`, then the loader's own init function.

    Args:
        inner: the loader's previous ``worker_init_fn`` (or None).
        rank: the global rank, for Lightning's per-worker seeding, which runs instead of ``inner`` when
            ``inner`` is None and ``seed_everything(workers=True)`` asked for it (``PL_SEED_WORKERS=1``), as
            Lightning would have added it to a loader without an init function.
        signals: the signals to shield from.
    """

    def __init__(self, inner=None, rank: int = 0, signals=PREEMPTION_SIGNALS):
        self.inner, self.rank, self.signals = inner, int(rank), tuple(signals)
        self.seed_workers = bool(int(os.environ.get("PL_SEED_WORKERS", 0)))

    def __call__(self, worker_id: int) -> None:
        shield_dataloader_worker(self.signals)
        if self.inner is not None:
            self.inner(worker_id)
        elif self.seed_workers:
            from lightning.fabric.utilities.seed import pl_worker_init_function

            pl_worker_init_function(worker_id, rank=self.rank)


def shield_loaders(loaders, rank: int = 0, signals=PREEMPTION_SIGNALS):
    """Give every multi-process ``DataLoader`` in ``loaders`` (one, or a list/tuple/dict of them) a
    :class:`ShieldedWorkerInit`; returns ``loaders``. Loaders without workers, or already shielded, are left
    as they are."""
    from torch.utils.data import DataLoader

    if isinstance(loaders, DataLoader):
        if loaders.num_workers > 0 and not isinstance(loaders.worker_init_fn, ShieldedWorkerInit):
            loaders.worker_init_fn = ShieldedWorkerInit(loaders.worker_init_fn, rank, signals)
    elif isinstance(loaders, dict):
        for v in loaders.values():
            shield_loaders(v, rank, signals)
    elif isinstance(loaders, (list, tuple)):
        for v in loaders:
            shield_loaders(v, rank, signals)
    return loaders


LOADER_HOOKS = ("train_dataloader", "val_dataloader", "test_dataloader", "predict_dataloader")


def slurm_job_id() -> str | None:
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array is not None and os.environ.get("SLURM_ARRAY_TASK_ID") is not None:
        return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


class PreemptionHandler(pl.Callback):
    """Save ``last.ckpt`` and stop (and requeue on SLURM) on SIGTERM / SIGUSR1.

    The datamodule's loaders get :class:`ShieldedWorkerInit` (at ``setup``, before any worker starts), so a
    signal sent to the whole job does not kill their workers and, through them, the main process before
    it saves.

    Args:
        signals: signal names to handle.
        requeue: run ``scontrol requeue <job>`` (rank 0) when under SLURM.
        exit_code: process exit status after a preemption save when the job was not requeued
            (pid.train exits with it; 0 when requeued).
    """

    def __init__(self, signals: tuple[str, ...] | list[str] = ("SIGTERM", "SIGUSR1", "SIGUSR2"),
                 requeue: bool = True, exit_code: int = 143):
        self.signals = [getattr(signal, s) if isinstance(s, str) else signal.Signals(s) for s in signals]
        self.requeue = requeue
        self.exit_code = exit_code
        self.received: int | None = None
        self.preempted = False
        self.requeued = False
        self.saved_path: str | None = None
        self._previous: dict[int, Any] = {}

    def setup(self, trainer, pl_module, stage: str) -> None:
        """Wrap the datamodule's ``*_dataloader`` hooks so every loader they return is shielded."""
        from lightning.pytorch.utilities.model_helpers import is_overridden

        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None:
            return
        for name in LOADER_HOOKS:
            hook = getattr(datamodule, name, None)
            if hook is None or getattr(hook, "_pid_shielded", False) or not is_overridden(name, datamodule):
                continue

            def shielded(*args, _hook=hook, **kwargs):
                return shield_loaders(_hook(*args, **kwargs), trainer.global_rank, self.signals)

            shielded._pid_shielded = True
            shielded.__wrapped__ = hook
            setattr(datamodule, name, shielded)

    def _handler(self, signum, frame) -> None:
        # Only set a flag: saving inside a signal handler could interleave with an optimiser step.
        self.received = signum

    def on_train_start(self, trainer, pl_module) -> None:
        # Installed after Lightning's own handlers (registered at fit start), so these take over
        # SIGTERM (whose Lightning handler would raise SIGTERMException without saving) and SIGUSR1.
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        for s in self.signals:
            try:
                self._previous[s] = signal.getsignal(s)
                signal.signal(s, self._handler)
            except (ValueError, OSError):  # pragma: no cover - platform without this signal
                pass

    def _foreign_handler(self, signum):
        """The handler that was installed before ours for ``signum`` unless it is Lightning's or a default."""
        prev = self._previous.get(signum) if signum is not None else None
        if not callable(prev) or prev in (signal.default_int_handler,):
            return None
        if (getattr(prev, "__module__", "") or "").startswith("lightning") or \
                type(prev).__module__.startswith("lightning"):
            return None
        return prev

    def _restore(self) -> None:
        for s, h in self._previous.items():
            try:
                signal.signal(s, h if h is not None else signal.SIG_DFL)
            except (ValueError, OSError, TypeError):  # pragma: no cover
                pass
        self._previous = {}

    def checkpoint_path(self, trainer: pl.Trainer) -> str:
        ckpt_cb = trainer.checkpoint_callback
        folder = getattr(ckpt_cb, "dirpath", None) or os.path.join(trainer.default_root_dir, "checkpoints")
        return os.path.join(folder, "last.ckpt")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not _any_rank(trainer, self.received is not None):
            return
        self.preempted = True
        self.saved_path = self.checkpoint_path(trainer)
        trainer.save_checkpoint(self.saved_path)  # collective under DDP/FSDP: every rank calls it
        if hasattr(trainer.checkpoint_callback, "last_model_path"):
            # ModelCheckpoint(save_last) then keeps this file as its last.ckpt instead of adding last-v1.ckpt
            trainer.checkpoint_callback.last_model_path = self.saved_path
        name = signal.Signals(self.received).name if self.received is not None else "a signal on another rank"
        log.warning("received %s: saved %s at step %d", name, self.saved_path, trainer.global_step)
        job = slurm_job_id()
        chained = self._foreign_handler(self.received)
        if chained is not None:
            # e.g. submitit's SIGUSR2 handler (hydra/launcher=slurm): it requeues the job and exits
            log.warning("passing %s on to %s", name, getattr(chained, "__qualname__", chained))
            self._restore()
            chained(self.received, None)
        elif self.requeue and job is not None and trainer.is_global_zero:
            result = subprocess.call(["scontrol", "requeue", job])
            self.requeued = result == 0
            log.warning("requeued SLURM job %s" if self.requeued else "`scontrol requeue %s` failed", job)
        elif trainer.is_global_zero:
            log.warning("re-run the same command to resume from %s", self.saved_path)
        trainer.should_stop = True

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore()


def find_preemption(trainer: pl.Trainer) -> PreemptionHandler | None:
    return next((cb for cb in trainer.callbacks if isinstance(cb, PreemptionHandler)), None)
