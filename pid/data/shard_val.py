"""Deterministic validation crops from shards (a map-style dataset, so callbacks can index it).

The index is built once by reading the tars (``iter_tar_samples``: member offsets; a truncated
shard keeps every sample read whole; no image decoded except headers):
each image is resized *down* (never up) so its shorter side equals ``crop_size`` (the "cover"
scaling of the training buckets) and cut into ``crops_per_image`` fixed grid crops
(``pid.data.image_folder.grid_positions``). Images smaller than the crop, or unreadable, are
skipped at index time with a count. Under DDP, Lightning shards the indices over ranks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from pid.data.image_folder import grid_positions
from pid.data.io import DEFAULT_MAX_PIXELS, decode_rgb, open_image, oriented_size, to_rgb8, upright
from pid.data.shard_stream import CAPTION_LENGTHS, IMAGE_EXTS, iter_tar_samples, list_shards

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Entry:
    shard: str
    key: str
    offset: int
    size: int
    caption: str
    width: int  # after cover scaling
    height: int


def cover_square(data: bytes, crop: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Upright uint8 RGB with shorter side ``crop`` (downscaled only; JPEG draft when ≥ 2×)."""
    im = open_image(data, max_pixels)
    w, h = im.size
    if min(w, h) >= 2 * crop and im.format == "JPEG":
        im.draft("RGB", (crop, crop))
    im = to_rgb8(upright(im))
    w, h = im.size
    if min(w, h) < crop:
        raise ValueError(f"{w}x{h} is smaller than the {crop}px validation crop (never upsampled)")
    s = crop / min(w, h)
    if s < 1:
        im = im.resize((max(crop, round(w * s)), max(crop, round(h * s))), Image.Resampling.BICUBIC)
    return np.asarray(im, dtype=np.uint8)


def _caption(meta: bytes | None, txt: bytes | None) -> str:
    if meta:
        try:
            caps = json.loads(meta).get("captions") or {}
            for k in CAPTION_LENGTHS:
                if caps.get(k):
                    return caps[k]
        except ValueError:
            pass
    return txt.decode("utf-8", "replace") if txt else ""


class FixedCropShardDataset(Dataset):
    """Fixed square validation crops from shards.

    ``crop_mode="cover"`` scales each image down so its shorter side is ``crop_size`` first (like
    the training buckets' cover mode); ``"crop"`` cuts native-resolution crops. ``select="grid"``
    spreads the crops evenly; ``"texture"`` keeps the most textured of a 4× denser grid (decoding
    each validation image once at index time), so held-out crops show content, not page margins.
    """

    def __init__(self, shards: str | Sequence[str], crop_size: int, crops_per_image: int = 2,
                 crop_mode: str = "cover", select: str = "grid"):
        if crop_mode not in ("cover", "crop") or select not in ("grid", "texture"):
            raise ValueError(
                f"crop_mode must be cover|crop and select grid|texture, got {crop_mode!r}, {select!r}"
            )
        self.shards = list_shards(shards)
        self.crop_size, self.crops_per_image = int(crop_size), int(crops_per_image)
        self.crop_mode = crop_mode
        self.entries: list[_Entry] = []
        self.skipped: list[str] = []
        self._cache: tuple[int, np.ndarray] | None = None
        for shard in self.shards:
            self._index(shard)
        self.items = []
        for i, e in enumerate(self.entries):
            n = self.crops_per_image * (4 if select == "texture" else 1)
            grid = grid_positions(e.height, e.width, self.crop_size, self.crop_size, n)
            if select == "texture":
                rgb, c = self._decode(i), self.crop_size
                score = [float(rgb[y : y + c, x : x + c].std()) for (y, x) in grid]
                best = sorted(range(len(grid)), key=lambda k: (-score[k], k))[: self.crops_per_image]
                grid = [grid[k] for k in sorted(best)]
            self.items += [(i, y, x) for (y, x) in grid]
        if self.skipped:
            log.warning(
                "validation shards: skipped %d sample(s), e.g. %s", len(self.skipped), self.skipped[0]
            )

    def crop_keys(self) -> list[str]:
        """The key of every crop (``<sample key>@<y>,<x>``) without decoding an image."""
        return [f"{self.entries[i].key}@{y},{x}" for i, y, x in self.items]

    def _index(self, shard: str) -> None:
        def on_error(reason: str, exn) -> None:
            self.skipped.append(f"{shard}: {reason} ({type(exn).__name__}: {exn})")

        for sample in iter_tar_samples(shard, on_error, offsets=True):
            key = sample["__key__"]
            ext = next((e for e in IMAGE_EXTS if e in sample), None)
            if ext is None:
                self.skipped.append(f"{shard}:{key}: no image member")
                continue
            try:
                w, h = oriented_size(open_image(sample[ext]))
            except Exception as e:  # noqa: BLE001
                self.skipped.append(f"{shard}:{key}: {type(e).__name__}: {e}")
                continue
            if min(w, h) < self.crop_size:
                self.skipped.append(f"{shard}:{key}: {w}x{h} < crop {self.crop_size}")
                continue
            s = min(1.0, self.crop_size / min(w, h)) if self.crop_mode == "cover" else 1.0
            cw, ch = max(self.crop_size, round(w * s)), max(self.crop_size, round(h * s))
            offset, size = sample["__offsets__"][ext]
            caption = _caption(sample.get("json"), sample.get("txt"))
            self.entries.append(_Entry(shard, key, offset, size, caption, cw, ch))

    def __len__(self) -> int:
        return len(self.items)

    def _decode(self, i: int) -> np.ndarray:
        if self._cache is not None and self._cache[0] == i:
            return self._cache[1]
        e = self.entries[i]
        with open(e.shard, "rb") as f:
            f.seek(e.offset)
            data = f.read(e.size)
        rgb = cover_square(data, self.crop_size) if self.crop_mode == "cover" else decode_rgb(data)
        self._cache = (i, rgb)
        return rgb

    def __getitem__(self, index: int) -> dict:
        i, y, x = self.items[index]
        crop = self._decode(i)[y : y + self.crop_size, x : x + self.crop_size]
        e = self.entries[i]
        return {
            "image": torch.from_numpy(crop.copy()).permute(2, 0, 1).contiguous(),
            "caption": e.caption,
            "key": f"{e.key}@{y},{x}",
        }
