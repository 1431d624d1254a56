"""Inspect one image file: is it decodable, how big is it upright, does it need converting?

``probe_image_file`` fully decodes the file with the one decoder of ``pid.data.io`` (that is the
only way to find truncated data, and whatever passes here decodes the same way when shards are
written and read) and returns a partial record, or raises ``Rejected(reason, detail)`` with one of
the reasons: ``zero_byte``, ``not_an_image``, ``decompression_bomb``, ``truncated``,
``unsupported_pixels`` (e.g. 32-bit float), ``unreadable``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from PIL import UnidentifiedImageError

from pid.data.io import (
    DEFAULT_MAX_PIXELS,
    BombError,
    UnsupportedImageError,
    frame_count,
    needs_icc_conversion,
    open_image,
    orientation_of,
    oriented_size,
    to_rgb8,
)

KEEP_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
KEEP_MODES = {"RGB", "L"}


class Rejected(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def conversion_needed(
    fmt: str | None, mode: str, orientation: int, frames: int = 1, icc: bool = False
) -> str | None:
    """Why the bytes cannot be kept as they are (then they are re-encoded as RGB PNG), or None.

    ``frames`` > 1 (animations, multi-page files): only the first frame is kept; ``icc``: an embedded
    non-sRGB profile is applied."""
    why = []
    if frames > 1:
        why.append(f"first frame of {frames}")
    if fmt not in KEEP_FORMATS:
        why.append(f"format {fmt}")
    if mode not in KEEP_MODES:
        why.append(
            {"CMYK": "cmyk->rgb", "I;16": "16bit->8bit", "I": "32bit->8bit", "P": "palette->rgb"}.get(
                mode, f"{mode.lower()}->rgb"
            )
        )
    if icc:
        why.append("icc->srgb")
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
        im = open_image(path, max_pixels)
    except BombError as e:
        raise Rejected("decompression_bomb", str(e)) from e
    except UnidentifiedImageError as e:
        raise Rejected("not_an_image", f"{e}") from e
    except Exception as e:
        raise Rejected("unreadable", f"{type(e).__name__}: {e}") from e
    with im:
        fmt, mode = im.format, im.mode
        orientation = orientation_of(im)
        width, height = oriented_size(im)
        frames = frame_count(im)
        try:
            im.load()
        except Exception as e:
            reason = (
                "truncated"
                if "truncat" in str(e).lower() or isinstance(e, (OSError, EOFError))
                else "unreadable"
            )
            raise Rejected(reason, f"{type(e).__name__}: {e}") from e
        icc = needs_icc_conversion(im)
        try:
            to_rgb8(im)  # the conversion every loader applies must work for this file
        except UnsupportedImageError as e:
            raise Rejected("unsupported_pixels", str(e)) from e
        except Exception as e:
            raise Rejected("unreadable", f"{type(e).__name__}: {e}") from e
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
        "frames": frames,
        "convert": conversion_needed(fmt, mode, orientation, frames, icc),
    }
