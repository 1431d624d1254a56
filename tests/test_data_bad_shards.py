"""Bad shards: an empty or unusable shard never kills a rank, and a truncated shard keeps every sample
that was written whole, counted once (issue 15, items 1 and 2)."""

from __future__ import annotations

import io
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from pid.data.buckets import BucketSet, single_level
from pid.data.shard_stream import BucketedShardStream, iter_tar_samples
from pid.data.shard_val import FixedCropShardDataset


def _png(seed: int, side: int = 64) -> bytes:
    buf = io.BytesIO()
    rgb = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _samples(prefix: str, n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        out += [(f"{prefix}{i}.png", _png(seed + i)), (f"{prefix}{i}.txt", f"caption {i}".encode())]
    return out


def _stream(root, num_batches: int = 4, **kw) -> BucketedShardStream:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return BucketedShardStream(str(root), BucketSet(single_level(64, 16)), 1, num_batches, **kw)


def _keys(batches) -> list[str]:
    return [k for b in batches for k in b["key"]]


@pytest.fixture()
def one_empty(tmp_path) -> Path:
    """s-000000.tar: 4 samples (64x64 PNG + .txt); s-000001.tar: a valid tar with zero members."""
    _tar(tmp_path / "s-000000.tar", _samples("s", 4))
    _tar(tmp_path / "s-000001.tar", [])
    return tmp_path


@pytest.mark.parametrize("mode", ["split", "resampled"])
def test_an_empty_shard_is_counted_and_every_rank_gets_its_batches(one_empty, mode):
    seen = []
    for rank in (0, 1):
        ds = _stream(one_empty, mode=mode, rank=rank, world_size=2)
        batches = list(ds)
        assert len(batches) == 4, (rank, mode)
        assert ds.skipped == {"empty_shard": 1}
        assert all(b["image"].shape == (1, 3, 64, 64) for b in batches)
        seen.append(set(_keys(batches)))
    assert seen[0] | seen[1] == {"s0", "s1", "s2", "s3"}
    if mode == "split":
        assert not seen[0] & seen[1]  # still an exact split of the usable samples


def test_an_empty_shard_with_one_rank_and_two_workers(one_empty):
    ds = _stream(one_empty, rank=0, world_size=1)
    batches = list(DataLoader(ds, batch_size=None, num_workers=2))
    assert len(batches) == 4
    assert set(_keys(batches)) == {"s0", "s1", "s2", "s3"}
    assert all(b["skipped"] == 1 for b in batches)  # the empty shard, counted in every worker


def test_a_shard_of_undecodable_samples_widens_the_share_instead_of_killing_the_rank(tmp_path):
    # Another instance: a shard that passes the header check (it has image members) but whose
    # images are all corrupt; the rank that draws it must still get its batches.
    _tar(tmp_path / "a-000000.tar", _samples("good", 4))
    _tar(tmp_path / "a-000001.tar", [(f"bad{i}.png", b"\x89PNG\r\n\x1a\n broken") for i in range(4)])
    for rank in (0, 1):
        ds = _stream(tmp_path, rank=rank, world_size=2)
        batches = list(ds)
        assert len(batches) == 4
        assert set(_keys(batches)) <= {f"good{i}" for i in range(4)}


def test_a_data_set_with_no_usable_sample_is_an_error_at_setup(tmp_path):
    _tar(tmp_path / "e-000000.tar", [])
    (tmp_path / "e-000001.tar").write_bytes(b"")
    _tar(tmp_path / "e-000002.tar", [("only.txt", b"a caption without an image")])
    with pytest.raises(ValueError, match=r"no usable sample in the 3 shard\(s\).*make data") as err:
        _stream(tmp_path)
    assert "empty_shard': 2" in str(err.value) and "no_image_member': 1" in str(err.value)


def test_a_data_set_whose_every_image_is_corrupt_stops_every_rank_with_a_message(tmp_path):
    _tar(tmp_path / "c-000000.tar", [("bad.png", b"not a png")])
    for rank in (0, 1):
        with pytest.raises(RuntimeError, match="no usable sample in a whole pass over all 1 shard"):
            list(_stream(tmp_path, rank=rank, world_size=2))


# --- item 2: truncation ------------------------------------------------------------------------
def _four(tmp_path) -> tuple[bytes, dict[str, tarfile.TarInfo]]:
    path = _tar(tmp_path / "whole.tar", _samples("t", 4))
    with tarfile.open(path) as tar:
        members = {m.name: m for m in tar.getmembers()}
    return path.read_bytes(), members


def _read(path) -> tuple[list[str], list[str]]:
    errors: list[str] = []
    keys = [s["__key__"] for s in iter_tar_samples(str(path), lambda reason, exn: errors.append(reason))]
    return keys, errors


def test_a_truncated_shard_keeps_the_samples_written_whole_and_counts_once(tmp_path):
    data, m = _four(tmp_path)
    cut = tmp_path / "cut.tar"
    end_t1 = m["t1.txt"].offset_data + m["t1.txt"].size
    cut.write_bytes(data[: end_t1 + 100])  # the input: 100 bytes after the end of t1.txt
    assert _read(cut) == (["t0", "t1"], ["truncated_shard"])
    # another instance: cut in the middle of t2.png's data: t2 is lost, t0 and t1 are not
    cut.write_bytes(data[: m["t2.png"].offset_data + 50])
    assert _read(cut) == (["t0", "t1"], ["truncated_shard"])
    # cut inside t1.txt's data: t1 is incomplete and dropped
    cut.write_bytes(data[: m["t1.txt"].offset_data + 2])
    assert _read(cut) == (["t0"], ["truncated_shard"])
    # cut inside t2's header block
    cut.write_bytes(data[: m["t2.png"].offset + 200])
    assert _read(cut) == (["t0", "t1"], ["truncated_shard"])
    # garbage where t2's header should be: t0 and t1 kept, one corrupt_shard
    garbage = data[: m["t2.png"].offset] + b"\x07" * 2048
    cut.write_bytes(garbage)
    assert _read(cut) == (["t0", "t1"], ["corrupt_shard"])
    # the whole shard: no count
    assert _read(tmp_path / "whole.tar") == (["t0", "t1", "t2", "t3"], [])


def test_truncated_shards_keep_their_samples_in_training_and_validation(tmp_path):
    data, m = _four(tmp_path)
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "cut-000000.tar").write_bytes(data[: m["t1.txt"].offset_data + m["t1.txt"].size + 100])
    val = FixedCropShardDataset(str(shards), crop_size=64, crops_per_image=1)
    assert sorted(e.key for e in val.entries) == ["t0", "t1"]
    assert len(val.skipped) == 1 and "truncated_shard" in val.skipped[0]
    assert val[1]["image"].shape == (3, 64, 64)
    ds = _stream(shards, num_batches=2, rank=0, world_size=1)
    assert set(_keys(list(ds))) == {"t0", "t1"}
    assert ds.skipped == {"truncated_shard": 1}  # one pass over the shard, one count
