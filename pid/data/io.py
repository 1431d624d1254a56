"""Image files on disk: listing, header probing and decoding to RGB."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")

# EXIF orientations 5–8 rotate by 90°, which swaps width and height.
_EXIF_ORIENTATION = 0x0112
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}


def list_image_files(root: str | os.PathLike, extensions=IMAGE_EXTENSIONS) -> list[Path]:
    """All image files under ``root`` (recursive), sorted by path for determinism."""
    root = Path(root)
    if not root.is_dir():
        return []
    exts = tuple(e.lower() for e in extensions)
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in exts)


def probe_image(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) after EXIF transpose, reading the header and verifying the file.

    Raises ``OSError``/``SyntaxError``/``ValueError`` (from PIL) on unreadable or
    truncated files; ``Image.verify`` checks PNG chunk CRCs without decoding pixels.
    """
    with Image.open(path) as im:
        im.verify()  # must come directly after open; the image is unusable afterwards
    with Image.open(path) as im:
        width, height = im.size
        orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    if orientation in _SWAPPING_ORIENTATIONS:
        width, height = height, width
    return width, height


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to an (H, W, 3) uint8 RGB array, EXIF orientation applied."""
    with Image.open(path) as im:
        im.load()
        im = ImageOps.exif_transpose(im)
        if im.mode != "RGB":
            # Transparent pixels are composited onto white rather than dropped to black.
            rgba = im.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            im = Image.alpha_composite(white, rgba).convert("RGB")
        return np.asarray(im, dtype=np.uint8).copy()


def read_caption(path: str | os.PathLike) -> str:
    """Caption from a sidecar text file with the image's stem (``x.png`` → ``x.txt``), or ""."""
    txt = Path(path).with_suffix(".txt")
    return txt.read_text(encoding="utf-8").strip() if txt.is_file() else ""
