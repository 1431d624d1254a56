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

Robustness (bad data is counted and skipped, never a dead rank):
- at setup, shards that can give no sample (0 bytes, zero members, no image member, unreadable)
  are counted in ``skipped`` and left out; when no shard is left the constructor raises
  ``ValueError`` naming the shards and the fix;
- a sample that cannot be decoded (corrupt bytes, no image member, decompression bomb) or that fits
  no bucket is skipped and counted (``skipped`` in the batch is the running count of that worker; a
  warning every ``warn_every`` skips); a truncated or damaged shard gives every sample read whole
  before the damage and is counted once (``iter_tar_samples``);
- a stream whose share of a pass gives no usable sample (e.g. its only shard holds nothing but
  corrupt images) widens its share for the following passes (a sample-level split of all shards,
  then every sample) instead of stopping, so every rank still gets its ``num_batches``; only a pass
  over every sample with none usable raises ``RuntimeError``.

Mid-epoch resume: the stream keeps no per-sample position. A new iterator (a new Lightning epoch,
or a restart from a checkpoint) starts a fresh pass whose seed also mixes in ``start_pass``;
``ShardDataModule`` sets ``start_pass`` from the checkpoint's global step, so a resumed run sees a
new shuffle of the data instead of replaying the samples the interrupted epoch began with. The
exact remainder of an interrupted epoch is not reproduced (the sample distribution is the same).
"""

from __future__ import annotations

import json
import logging
import os
import random
import tarfile
import warnings
from collections.abc import Iterator, Sequence
from itertools import count
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from pid.data.buckets import BucketSet
from pid.data.io import IMAGE_EXTENSIONS
from pid.data.transforms import DEFAULT_MAX_PIXELS, TooSmallError, bucket_crop

log = logging.getLogger(__name__)
IMAGE_EXTS = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS)  # the members the decoder reads
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
    """(rank, world) the data is sharded over: given, else the data-parallel coordinates (under context
    parallelism the ranks of a CP group read the same samples, :mod:`pid.parallel.context`)."""
    if rank is not None and world_size is not None:
        return rank, world_size
    from pid.parallel.context import data_parallel_rank_world

    return data_parallel_rank_world()


def split_member_name(name: str) -> tuple[str | None, str]:
    """WebDataset's member naming: ``dir/key.ext.more`` → (``dir/key``, ``ext.more`` lower-cased)."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot or not stem:
        return None, ""
    return (f"{head}/{stem}" if head else stem), ext.lower()


def _is_compressed(path: str) -> bool:
    with open(path, "rb") as f:
        magic = f.read(6)
    return magic[:2] == b"\x1f\x8b" or magic[:3] == b"BZh" or magic == b"\xfd7zXZ\x00"


def iter_tar_samples(path: str, on_error, offsets: bool = False) -> Iterator[dict]:
    """Samples of one tar shard, in order: ``{"__key__", "__url__", "<ext>": bytes, ...}``.

    Never raises for bad data: each problem is reported once through ``on_error(reason, exn)``
    with reason ``unreadable_shard`` (cannot be opened), ``empty_shard`` (a 0-byte file),
    ``truncated_shard`` (the file ends inside a member or before the end-of-archive block),
    ``corrupt_shard`` (a damaged header) or ``duplicate_member``. On truncation or corruption
    every sample whose members were all read whole is still yielded; only the sample whose
    member was cut is lost. ``offsets=True`` adds ``"__offsets__": {ext: (offset, size)}`` (the
    members' data positions in the file, for random access later).
    """
    try:
        f = open(path, "rb")
    except OSError as exn:
        on_error("unreadable_shard", exn)
        return
    with f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            on_error("empty_shard", OSError(f"{path}: a 0-byte file"))
            return
        pending: dict | None = None
        reading: str | None = None  # the key whose member data is being read
        try:
            tf = tarfile.open(fileobj=f, mode="r|*")
            for info in tf:
                key, ext = split_member_name(info.name) if info.isreg() else (None, "")
                if key is None:
                    continue
                if pending is not None and key != pending["__key__"]:
                    yield pending
                    pending = None
                reading = key
                data = tf.extractfile(info).read()
                reading = None
                tf.members = []  # stream mode: do not keep every header of a big shard
                if pending is None:
                    pending = {"__key__": key, "__url__": path}
                    if offsets:
                        pending["__offsets__"] = {}
                if ext in pending:
                    on_error("duplicate_member", ValueError(f"{path}: {info.name} appears twice; first kept"))
                    continue
                pending[ext] = data
                if offsets:
                    pending["__offsets__"][ext] = (info.offset_data, info.size)
        except Exception as exn:  # noqa: BLE001 - a cut or damaged shard: keep what was read whole
            if reading is not None and pending is not None and pending["__key__"] == reading:
                pending = None  # its member was cut: the sample is incomplete
            cut = isinstance(exn, (EOFError, tarfile.ReadError)) and "end of data" in str(exn)
            on_error("truncated_shard" if cut else "corrupt_shard", exn)
        else:
            if tf.fileobj.comptype == "tar" and not _is_compressed(path):
                # tarfile ends silently at a short or unreadable header: check the end-of-archive block
                block = os.pread(f.fileno(), tarfile.BLOCKSIZE, tf.offset)
                if len(block) < tarfile.BLOCKSIZE:
                    on_error("truncated_shard", EOFError(
                        f"{path}: the file ends at byte {size} inside the header at {tf.offset}"))
                elif block.strip(b"\0"):
                    on_error("corrupt_shard", tarfile.ReadError(
                        f"{path}: unreadable header at byte {tf.offset}; the rest of the shard is skipped"))
        if pending is not None:
            yield pending


def shard_problem(path: str) -> tuple[str, str] | None:
    """Why a shard can give no sample at all, from its headers only (``None`` when it holds an image
    member): ``("unreadable_shard" | "empty_shard" | "corrupt_shard" | "no_image_member", detail)``.

    Reads headers until the first image member, so a usable shard costs one or two header reads.
    """
    try:
        if os.path.getsize(path) == 0:
            return "empty_shard", "a 0-byte file"
        with tarfile.open(path, "r:*") as tf:
            for info in tf:
                if info.isreg() and split_member_name(info.name)[1] in IMAGE_EXTS:
                    return None
    except OSError as e:
        return "unreadable_shard", f"{type(e).__name__}: {e}"
    except tarfile.TarError as e:
        return ("empty_shard" if "empty file" in str(e) else "corrupt_shard"), f"{type(e).__name__}: {e}"
    return "empty_shard" if _member_count(path) == 0 else "no_image_member", "no image member"


def _member_count(path: str) -> int:
    try:
        with tarfile.open(path, "r:*") as tf:
            return sum(1 for _ in tf)
    except (OSError, tarfile.TarError):
        return 0


def pick_caption(sample: dict, rng: random.Random) -> str:
    """One of the stored caption lengths, uniformly (docs/method.md §6); falls back to the ``.txt`` member."""
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
        self.skipped: dict[str, int] = {}
        self.passed_over: list[tuple[str, str, str]] = []  # (shard, reason, detail) found at setup
        usable = []
        for shard in self.shards:
            problem = shard_problem(shard)
            if problem is None:
                usable.append(shard)
            else:
                self.passed_over.append((shard, *problem))
                self.skipped[problem[0]] = self.skipped.get(problem[0], 0) + 1
        if not usable:
            first = self.passed_over[0]
            raise ValueError(
                f"no usable sample in the {len(self.shards)} shard(s) at {shards!r}: {self.skipped} "
                f"(e.g. {first[0]}: {first[1]}, {first[2]}); rebuild them (`make data` for the sample "
                "set; the README's Training section for your own data) or point the loader at other shards"
            )
        if self.passed_over:
            warnings.warn(
                f"shard stream: {len(self.passed_over)} of {len(self.shards)} shard(s) hold no sample and "
                f"are skipped {self.skipped}, e.g. {self.passed_over[0][0]} ({self.passed_over[0][1]})",
                stacklevel=2,
            )
        self.shards = usable
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
        self._iterations = 0
        self._usable = 0  # samples that gave a crop (read by the pass logic of ``_samples``)

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
    def _pass_shards(self, p: int, g: int, n_streams: int, share: int = 0) -> tuple[list[str], int | None]:
        """Shards of pass ``p`` for stream ``g`` and the sample-level split (``keep``) or None.

        ``share`` widens a stream whose own share gave no usable sample: 1 reads every shard and keeps
        samples ``i % n_streams == g``, 2 reads every sample of every shard.
        """
        n = len(self.shards)
        order = list(range(n))
        random.Random(f"{self.seed}:order:{p}").shuffle(order)  # rank-independent
        if share >= 2:
            return [self.shards[i] for i in order], None
        if share == 1:
            return [self.shards[i] for i in order], g % n_streams
        if self.mode == "resampled":
            rng = random.Random(f"{self.seed}:resampled:{p}:{g}")
            return [self.shards[rng.randrange(n)] for _ in range(max(1, n // max(n_streams, 1)))], None
        if n >= n_streams:
            return [self.shards[i] for i in order[g::n_streams]], None
        return [self.shards[i] for i in order], g  # sample-level split

    def _samples(self, g: int, n_streams: int, first_pass: int) -> Iterator[tuple[dict, random.Random]]:
        """Samples for stream ``g``, pass after pass, never ending.

        A pass whose samples gave no crop (empty, corrupt or too-small data in this stream's share)
        widens the share (see ``_pass_shards``) instead of stopping the stream; only a pass over every
        sample with no usable one raises.
        """
        share = 0
        for p in count(first_pass):
            rng = random.Random(f"{self.seed}:samples:{p}:{g}")
            shards, keep = self._pass_shards(p, g, n_streams, share)
            usable_before = self._usable
            buf: list[dict] = []
            i = 0
            for shard in shards:
                for s in iter_tar_samples(shard, self._skip):
                    i += 1
                    if keep is not None and (i - 1) % n_streams != keep:
                        continue
                    buf.append(s)
                    if len(buf) >= max(1, self.shuffle_buffer):
                        yield buf.pop(rng.randrange(len(buf))), rng
            rng.shuffle(buf)
            for s in buf:
                yield s, rng
            if self._usable > usable_before:
                continue
            if share >= 2:
                raise RuntimeError(
                    f"shard stream {g}/{n_streams}: no usable sample in a whole pass over all "
                    f"{len(self.shards)} shard(s) (skipped so far: {self.skipped}); "
                    "every sample is corrupt or fits no bucket "
                    f"(smallest {self.buckets.min_area_bucket.label}): "
                    "rebuild the shards or lower the bucket size"
                )
            share = 2 if (share == 1 or self.mode == "resampled" or keep is not None) else 1
            warnings.warn(
                f"shard stream {g}/{n_streams}: its share of the shards gave no usable sample in pass {p}; "
                f"reading {'every sample' if share == 2 else 'a sample-level split'} of all shards from now "
                "on",
                stacklevel=2,
            )

    def _crops(self, g: int, n_streams: int, first_pass: int) -> Iterator[tuple[np.ndarray, str, str, str]]:
        for s, rng in self._samples(g, n_streams, first_pass):
            try:
                arr, bucket, _ = bucket_crop(image_bytes(s), self.buckets, rng, self.crop_mode, self.hflip,
                                             self.max_pixels, self.draft, min_std=self.min_std)  # fmt: skip
            except Exception as e:  # noqa: BLE001 - counted; a pass with no usable sample widens the share
                self._skip("too_small" if isinstance(e, TooSmallError) else "corrupt_sample", e)
                continue
            self._usable += 1
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
