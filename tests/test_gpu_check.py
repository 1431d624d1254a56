"""``make gpu-check`` at the tiny size on the CPU: every item of the GPU check runs and writes its report."""

from __future__ import annotations

import json

import pytest

from experiments import gpu_check


def test_gpu_check_tiny_cpu(tmp_path):
    out = gpu_check.main(["--tiny", "--sizes", "64", "--tile", "32", "--tile-overlap", "16", "--runs", "2",
                          "--warmup", "1", "--train-steps", "2", "--train-warmup", "1",
                          "--compile-backend", "eager", "--budget-s", "1e9", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "gpu.json").read_text())
    assert saved["device"] == out["device"] and saved["device"].startswith("CPU")
    modes = {r["mode"]: r for r in saved["decode"]}
    assert set(modes) == {"eager", "compiled", "tiled"}
    for mode, row in modes.items():
        assert row["status"] == "ok", (mode, row)
        assert row["runs"] == 2 and 0 < row["min_ms"] <= row["median_ms"] <= row["max_ms"]
    assert modes["compiled"]["first_call_s"] > 0
    assert [r["activation_checkpointing"] for r in saved["train"]] == [False, True]
    for row in saved["train"]:
        assert row["status"] == "ok", row
        assert row["images_per_s"] > 0 and row["flops_per_step"] > 0
        assert row["tokens_per_image"] == (64 // 8) ** 2  # the tiny teacher's 8-px patches
        assert row["tokens_per_s"] == pytest.approx(row["images_per_s"] * row["tokens_per_image"])
    md = (tmp_path / "gpu.md").read_text()
    assert saved["device"] in md and "| 64² | tiled |" in md


def test_gpu_check_budget_skips(tmp_path):
    """An item that would start past the time budget is recorded as skipped, not run."""
    saved = gpu_check.main(["--tiny", "--sizes", "64", "--runs", "1", "--warmup", "0", "--budget-s", "0",
                            "--out", str(tmp_path)])
    rows = saved["decode"] + saved["train"]
    assert rows and all(r["status"].startswith("skipped") or r["status"].startswith("one tile") for r in rows)


def test_gpu_check_failing_item_keeps_the_others(tmp_path, monkeypatch):
    """Failing items are recorded with their error; the rest still run and are written; the exit says so."""
    def broken(*args, **kwargs):
        raise RuntimeError("a broken training step")

    decode_fn = gpu_check.decode_fn

    def no_compiled(rel, net, *args, **kwargs):
        if type(net).__name__ == "OptimizedModule":
            raise RuntimeError("a compiler failure")
        return decode_fn(rel, net, *args, **kwargs)

    monkeypatch.setattr(gpu_check, "train_step_fn", broken)
    monkeypatch.setattr(gpu_check, "decode_fn", no_compiled)
    with pytest.raises(SystemExit, match="3 item"):
        gpu_check.main(["--tiny", "--sizes", "64", "--runs", "1", "--warmup", "0", "--budget-s", "1e9",
                        "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "gpu.json").read_text())
    assert [r["status"] for r in saved["train"]] == ["error: RuntimeError: a broken training step"] * 2
    status = {r["mode"]: r["status"] for r in saved["decode"]}
    assert status["eager"] == "ok" and status["compiled"] == "error: RuntimeError: a compiler failure"
