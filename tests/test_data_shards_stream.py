"""Streaming shards: 2 workers, one shape per batch, paper buckets, no upsampling, corrupt samples
skipped and counted, exact splitting, the same number of steps on every rank."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_prep.build import build
from data_prep.tar_writer import write_tar_atomic
from pid.data.buckets import single_level
from pid.data.shard_datamodule import ShardDataModule
from pid.data.shard_stream import BucketedShardStream

from conftest import photo

BASE, MULT = 64, 16
# (w, h): squares, 4:3, 3:4, 16:9, 9:16 and in-between sizes, all ≥ their bucket; one too small for any
SIZES = [(64, 64), (90, 90), (86, 64), (96, 72), (64, 86), (72, 96), (100, 56), (84, 48), (48, 84), (56, 100),
         (70, 66), (120, 64)]  # fmt: skip


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stream")
    folder = root / "imgs"
    folder.mkdir()
    for i, (w, h) in enumerate(SIZES):
        Image.fromarray(photo("astronaut", (w, h))).save(folder / f"img{i:02d}.{'jpg' if i % 2 else 'png'}")
        (folder / f"img{i:02d}.json").write_text(
            json.dumps({"prompt": f"long {i}", "prompt_short": f"short {i}"})
        )
    build(
        root / "work",
        root / "train",
        folders=[folder],
        scorers=(),
        bucket_kind="single",
        base_size=BASE,
        multiple=MULT,
        shard_bytes=10**9,
        max_per_shard=3,
        verbose=False,
    )
    # one extra shard with a corrupt sample, a sample without an image and one good sample
    good = (folder / "img00.png").read_bytes()
    write_tar_atomic(root / "train" / "shard-999999.tar", [
        ("broken.jpg", b"\xff\xd8\xff\xe0 not really a jpeg"), ("broken.txt", b"x"),
        ("noimage.txt", b"caption only"), ("extra.png", good), ("extra.txt", b"extra"),
    ])  # fmt: skip
    return root


def _sizes(root: Path) -> dict[str, tuple[int, int]]:
    out = {"extra": (64, 64)}
    for line in (root / "train" / "manifest.jsonl").read_text().splitlines():
        m = json.loads(line)
        out[m["key"]] = (m["width"], m["height"])
    return out


def test_two_workers_one_shape_per_batch_spec_buckets_no_upsampling(shards):
    dm = ShardDataModule(
        root=str(shards),
        crop_size=BASE,
        batch_size=2,
        num_workers=2,
        buckets={"multiple": MULT},
        steps_per_epoch=10,
        shuffle_buffer=4,
        persistent_workers=False,
    )
    dm.setup("fit")
    allowed = {(b.height, b.width) for b in single_level(BASE, MULT)}
    assert len(allowed) == 5
    sizes = _sizes(shards)
    batches = list(dm.train_dataloader())
    assert len(batches) == 10
    seen_shapes, skipped = set(), 0
    for b in batches:
        img = b["image"]
        assert img.dtype == torch.uint8 and img.ndim == 4 and img.shape[1] == 3
        h, w = img.shape[-2:]
        assert (h, w) in allowed
        seen_shapes.add((h, w))
        for key in b["key"]:
            sw, sh = sizes[key]
            assert w <= sw and h <= sh, (key, (sw, sh), (w, h))  # never upsampled
        assert all(c.startswith(("long", "short", "extra")) for c in b["caption"])
        skipped = max(skipped, b["skipped"])
    assert len(seen_shapes) >= 3  # several buckets in use
    assert skipped >= 1  # the corrupt samples were skipped and counted, not raised


def test_equal_steps_on_every_rank_and_exact_split(shards):
    from pid.data.buckets import make_buckets

    bs = make_buckets("single", BASE, MULT)
    src = str(shards / "train")
    lens = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for rank in range(3):  # 3 ranks, uneven data per rank: each still yields exactly 4 batches
            ds = BucketedShardStream(src, bs, batch_size=2, num_batches=4, rank=rank, world_size=3)
            lens.append(len(list(ds)))
    assert lens == [4, 4, 4]
    ds = BucketedShardStream(src, bs, batch_size=2, num_batches=1, rank=0, world_size=1)
    n = len(ds.shards)
    for p in range(3):
        parts = [ds._pass_shards(p, g, 2)[0] for g in range(2)]
        assert sorted(parts[0] + parts[1]) == sorted(ds.shards) and not set(parts[0]) & set(parts[1])
    assert ds._pass_shards(0, 0, 2)[0] != ds._pass_shards(1, 0, 2)[0] or n < 3  # reshuffled per pass
    few = ds._pass_shards(0, 1, n + 3)  # more streams than shards: every stream reads all, keeps i % G == g
    assert few[1] == 1 and sorted(few[0]) == sorted(ds.shards)


def test_resampled_mode_and_resume_state(shards):
    dm = ShardDataModule(
        root=str(shards),
        crop_size=BASE,
        batch_size=2,
        num_workers=0,
        buckets={"multiple": MULT},
        mode="resampled",
        steps_per_epoch=3,
    )
    dm.setup("fit")
    assert len(list(dm.train_dataloader())) == 3
    dm.load_state_dict({"global_step": 41})
    assert dm.train_set.start_pass == 42


def test_validation_crops_are_fixed_and_square(shards):
    dm = ShardDataModule(
        root=str(shards),
        val_shards=str(shards / "train"),
        crop_size=BASE,
        batch_size=4,
        num_workers=0,
        buckets={"multiple": MULT},
        steps_per_epoch=1,
        val_crops_per_image=2,
    )
    dm.setup("validate")
    a = [b["image"] for b in dm.val_dataloader()]
    b = [b["image"] for b in dm.val_dataloader()]
    assert all(x.shape[-2:] == (BASE, BASE) for x in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    big_enough = sum(min(w, h) >= BASE for w, h in SIZES) + 1  # + "extra"; smaller ones never upsampled
    assert len(dm.val_set) == 2 * big_enough  # the corrupt and image-less samples skipped
    assert any("broken" in s for s in dm.val_set.skipped) and any("noimage" in s for s in dm.val_set.skipped)


def test_sample_shards_config_is_a_drop_in_for_the_quickstart(tmp_path):
    from conftest import compose_train
    from hydra.utils import instantiate

    cfg = compose_train(["experiment=quickstart", "data=sample_shards", f"paths.data_dir={tmp_path}",
                         "paths.output_dir=/tmp/out"])  # fmt: skip
    dm = instantiate(cfg.data, _convert_="all")
    assert isinstance(dm, ShardDataModule)
    assert dm.hparams.crop_size == 128 and dm.hparams.batch_size == 8
    assert {(b.width, b.height) for b in dm.bucket_set()} == {
        (128, 128),
        (128, 96),
        (96, 128),
        (160, 96),
        (96, 160),
    }
    assert dm.root == tmp_path / "sample_images"  # where the embedded latent is fitted


def test_native_textured_validation_crops_show_content_and_training_crops_skip_blank(tmp_path):
    """Half-blank pages: native textured val crops come from the content half; min_std redraws blank
    training crops."""
    import random

    from pid.data.buckets import make_buckets
    from pid.data.shard_val import FixedCropShardDataset
    from pid.data.transforms import bucket_crop

    page = np.full((128, 256, 3), 255, np.uint8)
    page[:, 128:] = photo("astronaut", (128, 128))
    folder = tmp_path / "pages"
    folder.mkdir()
    Image.fromarray(page).save(folder / "page.png")
    build(tmp_path / "work", tmp_path / "val", folders=[folder], scorers=(), bucket_kind="single",
          base_size=64, multiple=16, verbose=False)  # fmt: skip

    textured = FixedCropShardDataset(tmp_path / "val", 64, 3, crop_mode="crop", select="texture")
    assert len(textured) == 3
    assert all(int(textured[i]["key"].split(",")[-1]) >= 64 for i in range(3))  # at least half content
    grid = FixedCropShardDataset(tmp_path / "val", 64, 3, crop_mode="crop", select="grid")
    assert min(float(grid[i]["image"].float().std()) for i in range(3)) < 1.0  # a blank margin crop

    data = (folder / "page.png").read_bytes()
    buckets = make_buckets("square", base_size=64, multiple=16)
    blank = {m: 0 for m in (0.0, 10.0)}
    for min_std in blank:
        rng = random.Random(0)
        for _ in range(40):
            arr, _, _ = bucket_crop(data, buckets, rng, "crop", hflip=False, min_std=min_std)
            blank[min_std] += float(arr.std()) < 10.0
    assert blank[10.0] < blank[0.0]
