"""experiments.predict_memory at the tiny size (MemTracker, fake tensors): rows add up, move the right way."""

from __future__ import annotations

import json

from experiments import predict_memory as pm


def test_predict_memory_tiny(tmp_path):
    out = pm.main(["--tiny", "--presets", "flux_2kto4k_v1pt5", "--tiled-presets", "flux_2kto4k_v1pt5",
                   "--decode-sizes", "128", "--tile", "64", "--tile-overlap", "16", "--train", "v1",
                   "--train-sizes", "128", "--batches", "1", "2", "--cp", "2", "--no-components",
                   "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "memory.json").read_text())
    assert saved["decode"] == out["decode"] and "## Decode" in (tmp_path / "memory.md").read_text()

    (dec,) = saved["decode"]
    # bf16 weights: at least 2 bytes per parameter (MemTracker rounds each storage up to 512 B)
    assert 2 * dec["params"] <= dec["parts"]["Parameter"] < 2 * dec["params"] + 512 * 400
    assert dec["peak"] > dec["parts"]["Parameter"] and dec["parts"].get("Gradient", 0) == 0
    if pm.tiled_available():
        (tiled,) = saved["tiled"]
        assert tiled["parts"]["Parameter"] == dec["parts"]["Parameter"] and 0 < tiled["working"]

    rows = {(r["batch"], r["ac"], r["cp"]): r for r in saved["train"]}
    assert set(rows) == {(b, ac, cp) for ac in (False, True) for b, cp in ((1, 1), (2, 1), (1, 2))}
    for r in rows.values():
        assert r["per_device"] == r["states"] + r["working_set"] + r["activations"]
        n = r["nets"]["net"]
        assert r["states"] == int((n["trainable"] * 16 + (n["params"] - n["trainable"]) * 4) / 8)
    for ac in (False, True):
        assert rows[(2, ac, 1)]["activations"] > rows[(1, ac, 1)]["activations"]   # batch 2 holds more
        # CP 2 (pid.parallel.context on the fake process group): half the tokens per rank
        assert rows[(1, ac, 2)]["activations"] < rows[(1, ac, 1)]["activations"]
        assert rows[(1, ac, 2)]["cp_source"].startswith("pid.parallel.context")
    assert rows[(1, True, 1)]["activations"] < rows[(1, False, 1)]["activations"]  # checkpointing saves
