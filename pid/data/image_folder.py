"""Crop datasets over a folder of image files.

- ``ImageCropDataset`` (training): a random ``crop_size`` crop of each image per
  access, with a random horizontal flip.
- ``FixedCropDataset`` (validation): a fixed, deterministic grid of crops per
  image, so every evaluation sees exactly the same pixels.

Both return ``{"image": uint8 (3, H, W), "caption": str, "key": str}``. Images
whose shorter side is below the crop are skipped when the index is built (with a
logged reason): a crop is never upsampled, as in PiD where too-small images are
dropped. Unreadable or truncated files are skipped too, both at index time
(header + ``verify``) and, should decoding still fail later, at access time
(with a warning and a running count).
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from pid.data.io import list_image_files, load_rgb, probe_image, read_caption

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageRecord:
    """An indexed image: its file, size after EXIF transpose, caption and key."""

    path: Path
    width: int
    height: int
    caption: str
    key: str


def _resolve_files(source: str | os.PathLike | Sequence[str | os.PathLike]) -> tuple[list[Path], Path | None]:
    if isinstance(source, (str, os.PathLike)):
        root = Path(source)
        return list_image_files(root), root
    return [Path(p) for p in source], None


def index_images(
    source: str | os.PathLike | Sequence[str | os.PathLike], crop_h: int, crop_w: int, name: str = "dataset"
) -> tuple[list[ImageRecord], dict[str, list[str]]]:
    """Index image files, skipping those smaller than a ``crop_h`` × ``crop_w`` crop or unreadable.

    ``source`` is a folder (searched recursively) or a list of files. Returns the
    kept records and ``{"too_small": [...], "corrupt": [...]}`` with one reason per
    skipped file; a summary is logged.
    """
    files, root = _resolve_files(source)
    records: list[ImageRecord] = []
    skipped: dict[str, list[str]] = {"too_small": [], "corrupt": []}
    for path in files:
        try:
            width, height = probe_image(path)
        except Exception as e:  # noqa: BLE001 - PIL raises several types for broken files
            skipped["corrupt"].append(f"{path}: {type(e).__name__}: {e}")
            continue
        if height < crop_h or width < crop_w:
            reason = f"{path}: {width}x{height} < crop {crop_w}x{crop_h} (never upsampled)"
            skipped["too_small"].append(reason)
            continue
        key = str(path.relative_to(root).with_suffix("")) if root is not None else path.stem
        records.append(ImageRecord(path, width, height, read_caption(path), key))
    for kind, reasons in skipped.items():
        if reasons:
            log.warning(
                "%s: skipped %d %s image(s), e.g. %s", name, len(reasons), kind.replace("_", " "), reasons[0]
            )
    if corrupt := skipped["corrupt"]:
        warnings.warn(
            f"{name}: {len(corrupt)} corrupt image file(s) skipped, e.g. {corrupt[0]}", stacklevel=3
        )
    log.info("%s: %d images indexed from %s", name, len(records), root or f"{len(files)} files")
    return records, skipped


def _to_tensor(crop: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).contiguous()


class _CropDatasetBase(Dataset):
    """Shared indexing and fault-tolerant decoding of the two crop datasets."""

    def __init__(self, source, crop_size: int | Sequence[int]):
        size = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
        self.crop_h, self.crop_w = int(size[0]), int(size[1])
        self.records, self.skipped = index_images(source, self.crop_h, self.crop_w, type(self).__name__)
        self.decode_failures = 0
        self._bad: set[int] = set()
        self._cache: tuple[int, np.ndarray] | None = None

    def _decode(self, record_index: int, keep: bool = False) -> np.ndarray | None:
        """Decoded RGB of a record, or None (warned, counted, remembered) if it fails.

        ``keep`` caches the last decoded image: consecutive fixed crops share one decode.
        """
        if self._cache is not None and self._cache[0] == record_index:
            return self._cache[1]
        record = self.records[record_index]
        try:
            rgb = load_rgb(record.path)
        except Exception as e:  # noqa: BLE001
            self._bad.add(record_index)
            self.decode_failures += 1
            warnings.warn(
                f"{type(self).__name__}: cannot decode {record.path} ({type(e).__name__}: {e}); skipped "
                f"({self.decode_failures} so far in this worker)",
                stacklevel=2,
            )
            return None
        if rgb.shape[0] < self.crop_h or rgb.shape[1] < self.crop_w:  # header lied about the size
            self._bad.add(record_index)
            self.decode_failures += 1
            return None
        if keep:
            self._cache = (record_index, rgb)
        return rgb


class ImageCropDataset(_CropDatasetBase):
    """Training crops: one uniformly random ``crop_size`` crop per access, random h-flip.

    An epoch visits every image ``repeats`` times.

    Randomness comes from torch's global generator, which DataLoader seeds per worker
    (and Lightning's ``seed_everything(workers=True)`` makes reproducible).
    """

    def __init__(self, source, crop_size: int | Sequence[int] = 256, hflip: bool = True, repeats: int = 1,
                 min_std: float = 0.0, max_tries: int = 8):
        super().__init__(source, crop_size)
        self.hflip = hflip
        self.repeats = max(1, int(repeats))  # crops of each image per epoch (small folders)
        # Near-blank crops (page margins, sky) teach little: redraw up to max_tries times while the
        # crop's pixel standard deviation (0–255 scale) is below min_std; the last draw is kept.
        self.min_std = float(min_std)
        self.max_tries = max(1, int(max_tries))

    def __len__(self) -> int:
        return len(self.records) * self.repeats

    def __getitem__(self, index: int) -> dict:
        index %= max(len(self.records), 1)
        for attempt in range(len(self.records)):
            i = (index + attempt) % len(self.records)
            if i in self._bad:
                continue
            rgb = self._decode(i)
            if rgb is None:
                continue
            h, w = rgb.shape[:2]
            for _ in range(self.max_tries):
                y = int(torch.randint(0, h - self.crop_h + 1, ()).item())
                x = int(torch.randint(0, w - self.crop_w + 1, ()).item())
                crop = rgb[y : y + self.crop_h, x : x + self.crop_w]
                if self.min_std <= 0 or float(crop.std()) >= self.min_std:
                    break
            if self.hflip and bool(torch.rand(()) < 0.5):
                crop = crop[:, ::-1]
            record = self.records[i]
            return {"image": _to_tensor(crop), "caption": record.caption, "key": f"{record.key}@{y},{x}"}
        raise RuntimeError(f"{type(self).__name__}: no decodable image left")


def grid_positions(height: int, width: int, crop_h: int, crop_w: int, n: int) -> list[tuple[int, int]]:
    """``n`` deterministic (y, x) crop corners on an even grid covering the image.

    One crop is centred; more form a rows × cols grid (rows ≈ √n, stretched along
    the longer side) with corners spread evenly from edge to edge, taken in raster
    order. Positions repeat only when the image is too small to hold n distinct crops.
    """
    if n <= 1:
        return [((height - crop_h) // 2, (width - crop_w) // 2)]
    rows = max(1, round(math.sqrt(n * height / width)))
    rows = min(rows, n)
    cols = math.ceil(n / rows)

    def spread(extent: int, crop: int, k: int) -> list[int]:
        if k == 1:
            return [(extent - crop) // 2]
        return [round(j * (extent - crop) / (k - 1)) for j in range(k)]

    ys, xs = spread(height, crop_h, rows), spread(width, crop_w, cols)
    return [(y, x) for y in ys for x in xs][:n]


class FixedCropDataset(_CropDatasetBase):
    """Validation crops: ``crops_per_image`` fixed grid crops of every image, no flip.

    Deterministic by construction (no random numbers), so keys and pixels are the
    same on every run, worker count and machine.
    """

    def __init__(self, source, crop_size: int | Sequence[int] = 256, crops_per_image: int = 4,
                 select: str = "grid", candidates_per_crop: int = 4):
        super().__init__(source, crop_size)
        if select not in ("grid", "texture"):
            raise ValueError(f"select must be 'grid' or 'texture', got {select!r}")
        self.crops_per_image = crops_per_image
        self.items = []
        for i, r in enumerate(self.records):
            if select == "grid":
                positions = grid_positions(r.height, r.width, self.crop_h, self.crop_w, crops_per_image)
            else:
                positions = self._most_textured(i, crops_per_image, candidates_per_crop)
            self.items += [(i, y, x) for (y, x) in positions]

    def _most_textured(self, record_index: int, n: int, candidates_per_crop: int) -> list[tuple[int, int]]:
        """The ``n`` grid positions (of n × candidates_per_crop) whose crops have the highest pixel
        standard deviation, in raster order: held-out crops that show content, not page margins."""
        r = self.records[record_index]
        grid = grid_positions(r.height, r.width, self.crop_h, self.crop_w, n * candidates_per_crop)
        rgb = self._decode(record_index, keep=True)
        if rgb is None:
            return grid[:n]
        score = [float(rgb[y : y + self.crop_h, x : x + self.crop_w].std()) for (y, x) in grid]
        best = sorted(range(len(grid)), key=lambda k: (-score[k], k))[:n]
        return [grid[k] for k in sorted(best)]

    def __len__(self) -> int:
        return len(self.items)

    def crop_keys(self) -> list[str]:
        """The key of every crop (``<image key>@<y>,<x>``) without decoding an image."""
        return [f"{self.records[i].key}@{y},{x}" for i, y, x in self.items]

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self.items):
            raise IndexError(index)
        for attempt in range(len(self.items)):
            i, y, x = self.items[(index + attempt) % len(self.items)]
            if i in self._bad:
                continue
            rgb = self._decode(i, keep=True)
            if rgb is None:
                continue
            crop = rgb[y : y + self.crop_h, x : x + self.crop_w]
            record = self.records[i]
            return {"image": _to_tensor(crop), "caption": record.caption, "key": f"{record.key}@{y},{x}"}
        raise RuntimeError(f"{type(self).__name__}: no decodable image left")
