"""Streaming WebDataset shards into aspect-ratio-bucketed uint8 batches.

``BucketedShardStream`` is an ``IterableDataset`` that yields whole batches
``{"image": uint8 (B, 3, H, W), "caption": list[str], "key": list[str], "skipped": int}``;
use it with ``DataLoader(batch_size=None)``. Every batch has one bucket's shape.

Distribution (any number of ranks × DataLoader workers = G streams, stream id g = rank·W + worker):
- shard order is a permutation seeded by ``(seed, pass)`` only: the same on every rank;
- ``mode="split"``: exact splitting, stream g reads shards ``perm[g::G]``; with fewer shards than
  streams every stream reads all shards and keeps samples ``i % G == g`` (still exact);
- ``mode="resampled"``: stream g draws shards with replacement from its own RNG (WebDataset's
  "resampled shards"); no epoch boundaries, each stream sees an independent sample;
- sample shuffling (a buffer of ``shuffle_buffer``), crop positions, flips and caption choice use
  an RNG seeded by ``(seed, pass, g)``: different on every rank and worker, reproducible;
- equal steps on every rank: one iteration yields exactly ``num_batches`` batches per rank (split
  over the workers); the underlying stream never ends (it starts the next pass of the shards),
  so no rank runs dry and DDP never hangs on an uneven last batch.

Robustness: a sample that cannot be decoded (corrupt bytes, no image member, decompression bomb)
or that fits no bucket is skipped and counted (``skipped`` in the batch is the running count of
that worker; a warning every ``warn_every`` skips); an unreadable shard is skipped and counted.

Mid-epoch resume: the stream keeps no per-sample position. A new iterator (a new Lightning epoch,
or a restart from a checkpoint) starts a fresh pass whose seed also mixes in ``start_pass``;
``ShardDataModule`` sets ``start_pass`` from the checkpoint's global step, so a resumed run sees a
new shuffle of the data instead of replaying the samples the interrupted epoch began with. The
exact remainder of an interrupted epoch is not reproduced (the sample distribution is the same).
"""

from __future__ import annotations

import json
import logging
import random
import warnings
from collections.abc import Iterator, Sequence
from itertools import count
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from pid.data.buckets import BucketSet
from pid.data.transforms import DEFAULT_MAX_PIXELS, TooSmallError, bucket_crop

log = logging.getLogger(__name__)
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
CAPTION_LENGTHS = ("long", "medium", "short")


def list_shards(source: str | Sequence[str]) -> list[str]:
    """Shard files: a directory (its ``*.tar``, sorted), a brace pattern, or a list."""
    if not isinstance(source, (str, Path)):
        return [str(s) for s in source]
    p = Path(source)
    if p.is_dir():
        return [str(q) for q in sorted(p.glob("*.tar"))]
    import braceexpand

    return list(braceexpand.braceexpand(str(source)))


def shard_count(source: str | Sequence[str]) -> int | None:
    """Samples in a shard directory, from its ``shards.json`` (None when unknown)."""
    if isinstance(source, (str, Path)) and (Path(source) / "shards.json").is_file():
        return int(json.loads((Path(source) / "shards.json").read_text())["count"])
    return None


def dist_rank_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def iter_tar_samples(path: str, on_error) -> Iterator[dict]:
    """Samples of one tar (``{"__key__": ..., "jpg": bytes, "json": bytes, ...}``); errors reported, never raised."""
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    def handler(exn) -> bool:
        on_error("corrupt_member", exn)
        return True

    try:
        with open(path, "rb") as f:
            members = (dict(m, __url__=path) for m in tar_file_iterator(f, handler=handler))
            yield from group_by_keys(members, handler=handler)
    except Exception as exn:  # noqa: BLE001 - truncated or unreadable shard: skip the rest of it
        on_error("corrupt_shard", exn)


def pick_caption(sample: dict, rng: random.Random) -> str:
    """One of the stored caption lengths, uniformly (SPEC §6); falls back to the ``.txt`` member."""
    try:
        caps = json.loads(sample["json"]).get("captions") or {} if "json" in sample else {}
    except (ValueError, AttributeError):
        caps = {}
    options = [caps[k] for k in CAPTION_LENGTHS if caps.get(k)] or [v for v in caps.values() if v]
    if options:
        return options[rng.randrange(len(options))]
    txt = sample.get("txt", b"")
    return txt.decode("utf-8", "replace") if isinstance(txt, bytes) else str(txt)


def image_bytes(sample: dict) -> bytes:
    for ext in IMAGE_EXTS:
        if ext in sample:
            return sample[ext]
    raise KeyError(f"sample {sample.get('__key__')} has no image member ({', '.join(IMAGE_EXTS)})")


class BucketedShardStream(IterableDataset):
    """Bucketed HQ crops from shards; see the module docstring for splitting and resume."""

    def __init__(
        self,
        shards: str | Sequence[str],
        buckets: BucketSet,
        batch_size: int,
        num_batches: int,
        mode: str = "split",
        seed: int = 0,
        shuffle_buffer: int = 64,
        crop_mode: str = "cover",
        hflip: bool = True,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        draft: bool = True,
        start_pass: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        warn_every: int = 100,
        min_std: float = 0.0,
    ):
        super().__init__()
        if mode not in ("split", "resampled"):
            raise ValueError(f"mode must be 'split' or 'resampled', not {mode!r}")
        self.shards = list_shards(shards)
        if not self.shards:
            raise FileNotFoundError(f"no shard (*.tar) found at {shards!r}")
        self.buckets, self.batch_size, self.num_batches = buckets, int(batch_size), int(num_batches)
        self.mode, self.seed, self.shuffle_buffer = mode, int(seed), int(shuffle_buffer)
        self.crop_mode, self.hflip, self.max_pixels, self.draft = crop_mode, hflip, max_pixels, draft
        self.start_pass, self.rank, self.world_size, self.warn_every = (
            start_pass,
            rank,
            world_size,
            warn_every,
        )
        self.min_std = float(min_std)
        self.skipped: dict[str, int] = {}
        self._iterations = 0

    def __len__(self) -> int:  # batches per rank per epoch
        return self.num_batches

    # -- stream identity ---------------------------------------------------------------------
    def _stream_id(self) -> tuple[int, int, int, int]:
        rank, world = dist_rank_world(self.rank, self.world_size)
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank * nw + wid, world * nw, wid, nw

    def _skip(self, reason: str, exn=None) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        total = sum(self.skipped.values())
        if total == 1 or total % self.warn_every == 0:
            warnings.warn(
                f"shard stream: skipped {total} sample(s) so far {self.skipped}; last: {reason}: {exn}",
                stacklevel=2,
            )

    # -- samples -----------------------------------------------------------------------------
    def _pass_shards(self, p: int, g: int, n_streams: int) -> tuple[list[str], int | None]:
        n = len(self.shards)
        if self.mode == "resampled":
            rng = random.Random(f"{self.seed}:resampled:{p}:{g}")
            return [self.shards[rng.randrange(n)] for _ in range(max(1, n // max(n_streams, 1)))], None
        order = list(range(n))
        random.Random(f"{self.seed}:order:{p}").shuffle(order)  # rank-independent
        if n >= n_streams:
            return [self.shards[i] for i in order[g::n_streams]], None
        return [self.shards[i] for i in order], g  # sample-level split

    def _samples(self, g: int, n_streams: int, first_pass: int) -> Iterator[tuple[dict, random.Random]]:
        for p in count(first_pass):
            rng = random.Random(f"{self.seed}:samples:{p}:{g}")
            shards, keep = self._pass_shards(p, g, n_streams)
            buf: list[dict] = []
            seen = 0
            for shard in shards:
                for i, s in enumerate(iter_tar_samples(shard, self._skip)):
                    if keep is not None and i % n_streams != keep:
                        continue
                    seen += 1
                    buf.append(s)
                    if len(buf) >= max(1, self.shuffle_buffer):
                        yield buf.pop(rng.randrange(len(buf))), rng
            rng.shuffle(buf)
            for s in buf:
                yield s, rng
            if seen == 0:
                raise RuntimeError(
                    f"shard stream {g}/{n_streams}: a whole pass over {len(shards)} shard(s) gave no sample"
                )

    def _crops(self, g: int, n_streams: int, first_pass: int) -> Iterator[tuple[np.ndarray, str, str, str]]:
        decoded_in_a_row_failed = 0
        for s, rng in self._samples(g, n_streams, first_pass):
            try:
                arr, bucket, _ = bucket_crop(image_bytes(s), self.buckets, rng, self.crop_mode, self.hflip,
                                             self.max_pixels, self.draft, min_std=self.min_std)  # fmt: skip
            except Exception as e:
                self._skip("too_small" if isinstance(e, TooSmallError) else "corrupt_sample", e)
                decoded_in_a_row_failed += 1
                if decoded_in_a_row_failed > 10_000:
                    raise RuntimeError(
                        "shard stream: 10000 unusable samples in a row (corrupt or too small)"
                    ) from e
                continue
            decoded_in_a_row_failed = 0
            yield arr, bucket.label, pick_caption(s, rng), s.get("__key__", "")

    def __iter__(self) -> Iterator[dict]:
        g, n_streams, wid, nw = self._stream_id()
        quota = self.num_batches // nw + (1 if wid < self.num_batches % nw else 0)
        first_pass = self.start_pass + 100_000 * self._iterations
        self._iterations += 1
        pending: dict[str, list] = {}
        made = 0
        if quota <= 0:
            return
        for arr, label, caption, key in self._crops(g, n_streams, first_pass):
            group = pending.setdefault(label, [])
            group.append((arr, caption, key))
            if len(group) == self.batch_size:
                del pending[label]
                yield {
                    "image": torch.from_numpy(np.stack([a for a, _, _ in group]))
                    .permute(0, 3, 1, 2)
                    .contiguous(),
                    "caption": [c for _, c, _ in group],
                    "key": [k for _, _, k in group],
                    "skipped": sum(self.skipped.values()),
                }
                made += 1
                if made >= quota:
                    return
