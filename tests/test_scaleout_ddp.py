"""2-process DDP training on CPU (gloo) from WebDataset shards: both ranks take the same number of steps,
on different samples, and end with the same (averaged) weights.

The test runs this file as a script; Lightning's launcher starts the second rank by re-running it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent


def _run(image_root: str, shards: str, out: str) -> None:
    import torch

    sys.path.insert(0, str(HERE))
    from conftest import compose_train, tiny_train_overrides

    from pid.train import build

    torch.set_num_threads(1)
    overrides = [o for o in tiny_train_overrides(Path(image_root), Path(out)) if not o.startswith("data")]
    cfg = compose_train([
        *overrides, "data=sample_shards", "data.root=null", f"++data.train_shards={shards}",
        "++data.val_shards=null", f"data.images_root={image_root}", "data.crop_size=64",
        "data.batch_size=2", "data.num_workers=0", "data.steps_per_epoch=null", "data.buckets.kind=square",
        "data.buckets.multiple=32",
        "++data.persistent_workers=false",
        "trainer=ddp", "trainer.accelerator=cpu", "trainer.precision=32-true",
        "trainer.max_steps=3", "trainer.devices=2", "++trainer.limit_val_batches=0",
        "trainer.enable_progress_bar=false", "callbacks.model_checkpoint.every_n_train_steps=1000",
        "callbacks.image_grid.every_n_steps=0", "compare=false",
        "+callbacks.probe._target_=scaleout_probe.Probe", f"+callbacks.probe.out={out}/probe.jsonl"])
    dm, module, trainer = build(cfg)
    assert type(trainer.strategy).__name__ == "DDPStrategy", "conf/trainer/ddp.yaml is what runs"
    trainer.fit(module, datamodule=dm)


def _shards(tmp: Path) -> Path:
    import skimage.data as sd
    from PIL import Image

    from data_prep.build import build

    folder = tmp / "imgs"
    folder.mkdir()
    src = sd.astronaut()
    for i in range(12):
        w, h = [(64, 64), (96, 72), (72, 96), (80, 80)][i % 4]
        a = np.asarray(Image.fromarray(np.roll(src, 17 * i, axis=1)).resize((w, h), Image.BICUBIC))
        Image.fromarray(a).save(folder / f"img{i:02d}.png")
    build(tmp / "work", tmp / "train", folders=[folder], scorers=(), bucket_kind="square", base_size=64,
          multiple=32, shard_bytes=10**9, max_per_shard=3, verbose=False)
    return tmp / "train"


@pytest.mark.slow
def test_two_process_ddp_training_on_cpu_from_shards(tiny_image_root, tmp_path):
    shards = _shards(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{HERE.parent}{os.pathsep}{HERE}"}
    proc = subprocess.run([sys.executable, __file__, str(tiny_image_root), str(shards), str(tmp_path)],
                          cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=900)
    (tmp_path / "ddp.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, "\n".join(ln for ln in (proc.stdout + proc.stderr).splitlines()
                                           if not ln.startswith("[rank0]"))[-4000:]
    ranks = []
    for r in (0, 1):
        recs = [json.loads(ln) for ln in (tmp_path / f"probe_rank{r}.jsonl").read_text().splitlines()]
        ranks.append({e: [x for x in recs if x["event"] == e] for e in ("start", "batch", "end")})
    for r in ranks:
        assert r["start"][0]["world"] == 2
        assert [b["step"] for b in r["batch"]] == [1, 2, 3], "3 optimizer steps on every rank"
        assert r["end"][0]["step"] == 3
    keys = [[k for b in r["batch"] for k in b["keys"]] for r in ranks]
    assert len(keys[0]) == len(keys[1]) == 6
    assert not set(keys[0]) & set(keys[1]), "the ranks trained on different samples"
    assert len(set(keys[0]) | set(keys[1])) == 12, "together they saw the 12 samples once"
    assert ranks[0]["end"][0]["digest"] == ranks[1]["end"][0]["digest"], "gradients averaged: same weights"


if __name__ == "__main__":
    _run(*sys.argv[1:4])
