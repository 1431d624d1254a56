"""Inspect one image file: is it decodable, how big is it upright, does it need converting?

``probe_image_file`` fully decodes the file (that is the only way to find truncated data) and
returns a partial record, or raises ``Rejected(reason, detail)`` with one of the reasons:
``zero_byte``, ``not_an_image``, ``decompression_bomb``, ``truncated``, ``unreadable``.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from pid.data.transforms import DEFAULT_MAX_PIXELS, orientation_of, oriented_size

KEEP_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
KEEP_MODES = {"RGB", "L"}


class Rejected(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def conversion_needed(fmt: str | None, mode: str, orientation: int) -> str | None:
    """Why the bytes cannot be kept as they are (then they are re-encoded as RGB PNG), or None."""
    why = []
    if fmt not in KEEP_FORMATS:
        why.append(f"format {fmt}")
    if mode not in KEEP_MODES:
        why.append(
            {"CMYK": "cmyk->rgb", "I;16": "16bit->8bit", "I": "32bit->8bit", "P": "palette->rgb"}.get(
                mode, f"{mode.lower()}->rgb"
            )
        )
    if orientation != 1:
        why.append(f"exif-orientation {orientation}->upright")
    return ", ".join(why) or None


def probe_image_file(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise Rejected("unreadable", f"{type(e).__name__}: {e}") from e
    if not data:
        raise Rejected("zero_byte", "empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise Rejected("decompression_bomb", str(e)) from e
    except UnidentifiedImageError as e:
        raise Rejected("not_an_image", f"{e}") from e
    except Exception as e:
        raise Rejected("unreadable", f"{type(e).__name__}: {e}") from e
    with im:
        w0, h0 = im.size
        if w0 * h0 > max_pixels:
            raise Rejected("decompression_bomb", f"{w0}x{h0} > max_pixels={max_pixels}")
        fmt, mode = im.format, im.mode
        orientation = orientation_of(im)
        width, height = oriented_size(im)
        try:
            im.load()
        except Exception as e:
            reason = (
                "truncated"
                if "truncat" in str(e).lower() or isinstance(e, (OSError, EOFError))
                else "unreadable"
            )
            raise Rejected(reason, f"{type(e).__name__}: {e}") from e
        has_alpha = "A" in im.mode or (im.mode == "P" and "transparency" in im.info)
    return {
        "path": str(path.resolve()),
        "width": int(width),
        "height": int(height),
        "format": fmt,
        "mode": mode + ("+alpha" if has_alpha and "A" not in mode else ""),
        "orientation": orientation,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "convert": conversion_needed(fmt, mode, orientation),
    }
