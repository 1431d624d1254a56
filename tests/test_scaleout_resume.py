"""Runs survive preemption: SIGKILL mid-run, re-run the same command, and training resumes from the saved
step with the same optimiser and EMA state and ends at the configured step; SIGTERM saves and stops;
checkpoints are written atomically; NaN/Inf losses are skipped, counted and stop the run when persistent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import compose_train, tiny_train_overrides

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _command(root: Path, tmp: Path, *extra: str) -> list[str]:
    overrides = [o for o in tiny_train_overrides(root, tmp) if not o.startswith("paths.output_dir=")]
    return [sys.executable, "-m", "pid.train", *overrides,
            "trainer.max_steps=10", "callbacks.model_checkpoint.every_n_train_steps=2",
            "++trainer.limit_val_batches=0", "callbacks.image_grid.every_n_steps=0",
            "callbacks.ema.decay=0.9",
            "compare=false", "trainer.enable_progress_bar=false",
            "+callbacks.probe._target_=scaleout_probe.Probe", f"+callbacks.probe.out={tmp}/probe.jsonl",
            *extra]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{REPO}", "OMP_NUM_THREADS": "1",
            "WANDB_MODE": "offline"}


def _records(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.is_file() else []


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_with_same_state_and_finishes(tiny_image_root, tmp_path):
    cmd = _command(tiny_image_root, tmp_path, "+callbacks.probe.sleep=0.25")
    probe = tmp_path / "probe_rank0.jsonl"
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if any(r["event"] == "batch" and r["step"] >= 5 for r in _records(probe)):
            break
        time.sleep(0.05)
    assert proc.poll() is None, (
        "the first run ended before it could be killed:\n" + proc.stderr.read().decode()[-3000:]
    )
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    runs = list((tmp_path / "logs" / "quickstart" / "runs").iterdir())
    assert len(runs) == 1
    run_dir = runs[0]
    last = run_dir / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=False)
    saved_step = saved["global_step"]
    assert 4 <= saved_step < 10
    assert not list(run_dir.rglob("*.tmp-*")), "no temporary checkpoint files are left behind"

    time.sleep(1.1)  # a new Hydra run folder (timestamped to the second)
    rerun = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)
    out = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, out[-4000:]
    assert "auto-resume" in out

    starts = [r for r in _records(probe) if r["event"] == "start"]
    assert len(starts) == 2 and starts[0]["step"] == 0
    resumed = starts[1]
    assert resumed["step"] == saved_step
    assert resumed["output_dir"] == str(run_dir), "the re-run continues in the first run's folder"
    state = torch.load(tmp_path / "probe_start1.pt", weights_only=True)  # what the re-run started from
    want = saved["optimizer_states"][0]["state"]
    assert sorted(state["optimizer"]) == sorted(want)
    for k, s in want.items():
        for name in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(state["optimizer"][k][name], s[name]), (k, name)
    assert sorted(state["ema"]) == sorted(saved["ema"]["shadow"])
    for k, v in saved["ema"]["shadow"].items():
        assert torch.equal(state["ema"][k], v), k
    assert resumed["ema_updates"] == saved["ema"]["num_updates"]
    assert resumed["optimizer"] != starts[0]["optimizer"]

    end = [r for r in _records(probe) if r["event"] == "end"][-1]
    assert end["step"] == 10
    final = torch.load(last, map_location="cpu", weights_only=True)
    assert final["global_step"] == 10
    assert json.loads((run_dir / "run_complete.json").read_text())["global_step"] == 10
    assert (run_dir / "pid_decoder.safetensors").is_file()
    # the second launch folder only points at the run it continued
    other = [d for d in (tmp_path / "logs" / "quickstart" / "runs").iterdir() if d != run_dir]
    assert len(other) == 1 and (other[0] / "RESUMED_IN.txt").read_text().strip() == str(run_dir)

    # a finished experiment is not resumed (re-running it starts afresh); an unfinished one is found
    from pid.utils.resume import find_resume_checkpoint

    overrides = cmd[3:]
    cfg = compose_train([*overrides, f"paths.output_dir={tmp_path}/fresh"])
    assert find_resume_checkpoint(cfg, overrides=overrides) is None
    (run_dir / "run_complete.json").unlink()
    assert find_resume_checkpoint(cfg, overrides=overrides) == (last, run_dir)
    assert find_resume_checkpoint(cfg, overrides=[*overrides, "model.optimizer.lr=0.1"]) is None


@pytest.mark.slow
def test_sigterm_saves_last_checkpoint_and_stops(tiny_image_root, tmp_path):
    cmd = _command(tiny_image_root, tmp_path, "+callbacks.probe.sleep=0.25", "trainer.max_steps=40",
                   "callbacks.model_checkpoint.every_n_train_steps=100")
    probe = tmp_path / "probe_rank0.jsonl"
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if any(r["event"] == "batch" and r["step"] >= 3 for r in _records(probe)):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 143, err.decode()[-3000:]  # not under SLURM: not requeued, non-zero exit
    run_dir = next((tmp_path / "logs" / "quickstart" / "runs").iterdir())
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    end = [r for r in _records(probe) if r["event"] == "end"][-1]
    assert 3 <= ckpt["global_step"] == end["step"] < 40
    assert not (run_dir / "run_complete.json").exists()
    assert not (run_dir / "pid_decoder.safetensors").exists(), "no export after a preemption"


def test_atomic_checkpoint_io_never_leaves_a_partial_file(tmp_path, monkeypatch):
    from pid.lit.fault_tolerance import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    assert torch.load(path, weights_only=True)["step"] == 1

    def crash(obj, f, *a, **k):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["step"] == 1, "the previous checkpoint is intact"
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_checkpoint_that_does_not_fit_names_the_file_and_keeps_the_previous_one(tmp_path):
    """A real short write: the child process may not write files over 256 KiB (RLIMIT_FSIZE), the way a
    full disk or quota stops a checkpoint halfway."""
    path = tmp_path / "last.ckpt"
    torch.save({"step": 1}, path)
    script = f"""
import resource, signal, torch
from pid.lit.fault_tolerance import CheckpointWriteError, atomic_torch_save
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))
try:
    atomic_torch_save({{"step": 2, "w": torch.zeros(1 << 20)}}, {str(path)!r})
except CheckpointWriteError as err:
    print(err)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"could not write checkpoint {path}" in out.stdout and "MiB free on" in out.stdout, out.stdout
    assert "the previous last.ckpt is kept" in out.stdout and "paths.log_dir=" in out.stdout
    assert torch.load(path, weights_only=True)["step"] == 1, "the previous checkpoint is intact"
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"], "no temporary file is left behind"


@pytest.mark.slow
def test_nonfinite_loss_is_skipped_counted_and_stops_when_persistent(tiny_image_root, tmp_path):
    from pid.lit.ema import find_ema
    from pid.lit.fault_tolerance import NonFiniteGuard, NonFiniteLossError
    from pid.train import build

    cfg = compose_train(tiny_train_overrides(
        tiny_image_root, tmp_path, "trainer.max_steps=6", "++trainer.limit_val_batches=0", "compare=false",
        "callbacks.image_grid.every_n_steps=0", "callbacks.nonfinite.max_consecutive=3",
        "callbacks.model_checkpoint.every_n_train_steps=100", "trainer.log_every_n_steps=1"))
    dm, module, trainer = build(cfg)
    real = module.diffusion_loss
    calls = {"n": 0}
    snapshots = {}

    def flaky(*args, **kwargs):  # steps 2 and 3 (0-based) are NaN
        calls["n"] += 1
        terms = real(*args, **kwargs)
        if calls["n"] in (3, 4):
            snapshots[calls["n"]] = [p.detach().clone() for p in module.net.parameters()]
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    module.diffusion_loss = flaky
    trainer.fit(module, datamodule=dm)
    guard = next(cb for cb in trainer.callbacks if isinstance(cb, NonFiniteGuard))
    assert trainer.global_step == 6 and guard.skipped == 2 and guard.consecutive == 0
    # the NaN step changed no weight: parameters before NaN step 3 and NaN step 4 are identical
    for a, b in zip(snapshots[3], snapshots[4]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert all(torch.isfinite(p).all() for p in module.net.parameters())
    assert all(torch.isfinite(v).all() for v in find_ema(trainer).shadow.values())
    assert trainer.callback_metrics["train/nonfinite_skipped"] == 2

    def fit_with_every_loss(folder: str, change) -> None:
        """A 6-step run (3 bad steps in a row stop it); every loss goes through ``change(loss, module)``."""
        cfg = compose_train(tiny_train_overrides(
            tiny_image_root, tmp_path / folder, f"latent.path={tmp_path}/latent.safetensors",
            "trainer.max_steps=6", "++trainer.limit_val_batches=0", "compare=false",
            "callbacks.image_grid.every_n_steps=0", "callbacks.nonfinite.max_consecutive=3",
            "callbacks.model_checkpoint.every_n_train_steps=100"))
        dm, module, trainer = build(cfg)
        plain = module.diffusion_loss

        def changed(*args, **kwargs):
            terms = plain(*args, **kwargs)
            terms["loss"] = change(terms["loss"], module)
            return terms

        module.diffusion_loss = changed
        trainer.fit(module, datamodule=dm)

    with pytest.raises(NonFiniteLossError, match="3 consecutive training steps"):
        fit_with_every_loss("b", lambda loss, module: loss + float("inf"))

    # A finite loss whose gradients are infinite (as at a learning rate far too high) counts the same: the
    # run stops after 3 in a row instead of skipping every step and exporting untrained weights.
    def infinite_gradient(loss, module):
        w = next(module.net.parameters()).sum()
        return loss + torch.sqrt(w - w.detach())  # value 0, gradient +inf

    with pytest.raises(NonFiniteLossError, match="3 consecutive training steps had a non-finite gradient"):
        fit_with_every_loss("c", infinite_gradient)


@pytest.mark.slow
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGUSR1"])
def test_signal_to_the_whole_process_group_with_dataloader_workers_saves_and_resumes(
        tiny_image_root, tmp_path, signame):
    """Issue 15 item 11: a cluster signals every process of the job, DataLoader workers included (here: the
    whole process group of a run with 2 workers, mid-step). last.ckpt is written at the current step, and the
    same command resumes from it and finishes."""
    cmd = _command(tiny_image_root, tmp_path, "+callbacks.probe.sleep=0.25", "trainer.max_steps=12",
                   "callbacks.model_checkpoint.every_n_train_steps=100")
    cmd = [c for c in cmd if c != "data.num_workers=0"] + ["data.num_workers=2"]
    probe = tmp_path / "probe_rank0.jsonl"
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if any(r["event"] == "batch" and r["step"] >= 3 for r in _records(probe)):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before the signal:\n" + proc.stderr.read().decode()[-3000:]
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) >= 2, "the run has its DataLoader worker processes"
    os.killpg(proc.pid, getattr(signal, signame))
    _, err = proc.communicate(timeout=600)
    err = err.decode()
    assert proc.returncode == 143, err[-3000:]  # saved and stopped (not requeued: not under SLURM)
    assert "killed by signal" not in err and "exited unexpectedly" not in err, err[-3000:]
    run_dir = next((tmp_path / "logs" / "quickstart" / "runs").iterdir())
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    end = [r for r in _records(probe) if r["event"] == "end"][-1]
    assert 3 <= ckpt["global_step"] == end["step"] < 12  # the step the run was at
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["last.ckpt"]

    time.sleep(1.1)  # a new Hydra run folder (timestamped to the second)
    rerun = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-4000:]
    starts = [r for r in _records(probe) if r["event"] == "start"]
    assert len(starts) == 2 and starts[1]["step"] == ckpt["global_step"]
    assert starts[1]["output_dir"] == str(run_dir)
    assert [r for r in _records(probe) if r["event"] == "end"][-1]["step"] == 12


def _worker_init(worker_id: int) -> None:
    torch.manual_seed(1000 + worker_id)


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGUSR2"])
def test_shielded_dataloader_workers_keep_serving_through_outside_signals(signame):
    """A DataLoader whose workers got ShieldedWorkerInit: a signal from outside (a `kill` process, not the
    workers' parent) leaves every worker serving (unshielded, each would die of it and the main process would
    raise "DataLoader worker ... is killed by signal"); the DataLoader's own shutdown still ends them."""
    from torch.utils.data import DataLoader

    from pid.lit.fault_tolerance import ShieldedWorkerInit, shield_loaders

    loader = shield_loaders(DataLoader(list(range(64)), batch_size=4, num_workers=2,
                                       worker_init_fn=_worker_init))
    assert isinstance(loader.worker_init_fn, ShieldedWorkerInit)
    assert loader.worker_init_fn.inner is _worker_init
    assert shield_loaders(loader).worker_init_fn.inner is _worker_init  # shielding twice wraps once
    it = iter(loader)
    first = [next(it) for _ in range(4)]
    workers = list(it._workers)
    for w in workers:
        subprocess.run(["kill", f"-{signame.removeprefix('SIG')}", str(w.pid)], check=True)
    time.sleep(0.5)
    assert all(w.is_alive() for w in workers), [w.exitcode for w in workers]
    rest = list(it)
    assert torch.cat(first + rest).tolist() == list(range(64)), "every batch arrived"
    for w in workers:  # iteration over: the DataLoader shut its workers down; they ended cleanly
        w.join(10)
        assert w.exitcode == 0


def test_shielded_worker_still_ends_on_its_parents_sigterm():
    """multiprocessing's exit (and the DataLoader's last resort) terminate workers with SIGTERM from the
    parent: a shielded worker exits at once, with status 0, as PyTorch's own handler makes it."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    ready = ctx.Event()
    proc = ctx.Process(target=_shielded_child, args=(ready,), daemon=True)
    proc.start()
    assert ready.wait(30)
    subprocess.run(["kill", "-TERM", str(proc.pid)], check=True)  # not the parent: ignored
    time.sleep(0.5)
    assert proc.is_alive()
    proc.terminate()  # the parent: ends it
    proc.join(10)
    assert proc.exitcode == 0


def _shielded_child(ready) -> None:
    from pid.lit.fault_tolerance import shield_dataloader_worker

    assert shield_dataloader_worker()
    ready.set()
    time.sleep(60)
