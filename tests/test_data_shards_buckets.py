"""Bucket tables follow docs/method.md §3 and scale for tiny runs.

Crops never upsample; draft decoding is faithful.
"""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image

from pid.data.buckets import BucketSet, make_buckets, multi_level, single_level
from pid.data.transforms import TooSmallError, bucket_crop

from conftest import photo


def test_single_level_is_the_paper_table():
    got = {b.name: (b.width, b.height) for b in single_level(2048, 64)}
    assert got == {"1:1": (2048, 2048), "4:3": (2304, 1728), "3:4": (1728, 2304), "16:9": (2688, 1536),
                   "9:16": (1536, 2688)}  # fmt: skip


def test_multi_level_2k_to_4k():
    buckets = multi_level(2048, 4096, 256, 64)
    assert {b.level for b in buckets} == set(range(2048, 4097, 256))
    assert all(b.width % 64 == 0 and b.height % 64 == 0 for b in buckets)
    squares = sorted(b.width for b in buckets if b.name == "1:1")
    assert squares == list(range(2048, 4097, 256))
    assert max(b.width * b.height for b in buckets) >= 4096 * 4096 * 0.95


@pytest.mark.parametrize("base,multiple", [(128, 32), (64, 16), (256, 64)])
def test_buckets_scale_for_tiny_runs(base, multiple):
    bs = single_level(base, multiple)
    assert bs[0].width == bs[0].height == base
    assert all(b.width % multiple == 0 and b.height % multiple == 0 for b in bs)
    by = {b.name: b for b in bs}
    assert by["4:3"].width > by["4:3"].height and by["16:9"].aspect > by["4:3"].aspect
    assert (by["3:4"].width, by["3:4"].height) == (by["4:3"].height, by["4:3"].width)


def test_assignment_nearest_aspect_and_never_upsample():
    bs = BucketSet(single_level(2048, 64))
    assert bs.assign(3840, 2160).name == "16:9"
    assert bs.assign(4000, 3000).name == "4:3"
    assert bs.assign(2160, 3840).name == "9:16"
    assert bs.assign(2680, 1740).name == "4:3"  # nearer 16:9 (log), but 2688 does not fit 2680 wide
    assert bs.assign(2500, 1600) is None  # 4:3 needs 1728 rows: too small for every bucket
    assert bs.assign(2000, 2000) is None  # too small for every bucket
    ml = make_buckets("multi", 2048, 64, level_choice="largest")
    assert ml.assign(4096, 4096).width == 4096
    rnd = make_buckets("multi", 2048, 64, level_choice="random")
    levels = {rnd.assign(4096, 4096, random.Random(i)).width for i in range(40)}
    assert len(levels) > 3 and max(levels) <= 4096


def _jpeg(w, h, q=92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(photo("astronaut", (w, h))).save(buf, "JPEG", quality=q)
    return buf.getvalue()


def test_bucket_crop_shapes_uint8_and_too_small():
    bs = make_buckets("single", 64, 16)
    arr, b, info = bucket_crop(_jpeg(90, 50), bs, random.Random(0))
    assert arr.dtype == np.uint8 and arr.shape == (b.height, b.width, 3) and b.name == "16:9"
    assert info["scale"] <= 1.0
    with pytest.raises(TooSmallError):
        bucket_crop(_jpeg(40, 40), bs, random.Random(0))


def test_draft_decoding_matches_full_decoding():
    bs = make_buckets("square", 64, 16)
    data = _jpeg(512, 512, q=95)
    fast, _, _ = bucket_crop(data, bs, random.Random(1), hflip=False, draft=True)
    slow, _, _ = bucket_crop(data, bs, random.Random(1), hflip=False, draft=False)
    assert np.abs(fast.astype(int) - slow.astype(int)).mean() < 4.0
