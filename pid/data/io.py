"""Image files on disk and encoded image bytes: listing, header probing and THE decoder to RGB.

Every path that turns a file into pixels (data-set building: ingest/score/filter/shards; the shard
stream and validation crops, image folders, latent fitting and statistics) goes through
``open_image`` + ``to_rgb8`` (or ``decode_rgb``, which is both plus EXIF orientation), so one file
gives the same pixels everywhere. The rules:

- **first frame**: animated GIF/WebP/PNG and multi-page TIFF give their first frame;
- **EXIF orientation** is applied (``upright``); sizes are reported upright (``oriented_size``);
- **16-bit** greyscale (``I;16*``) and 16-bit-range ``I`` images are scaled by 255/65535 (rounded);
  ``I`` values outside [0, 65535] and 32-bit float (``F``) images have no defined display range and
  raise ``UnsupportedImageError``;
- **ICC**: an embedded non-sRGB profile (RGB or CMYK) is converted to sRGB with LittleCMS; a profile
  that cannot be parsed is ignored (the pixels are taken as sRGB, as browsers do);
- **CMYK** without a profile, YCbCr, LAB, HSV, 1-bit and 8-bit greyscale: PIL's conversion to RGB;
- **palette / alpha** (``P``, ``PA``, ``LA``, ``RGBA``, ``RGBa`` …): composited onto white;
- **decompression bombs**: a header claiming more than ``max_pixels`` raises ``BombError`` before
  any pixel is decoded.
"""

from __future__ import annotations

import errno
import functools
import io
import logging
import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".pgm", ".ppm", ".pnm")
DEFAULT_MAX_PIXELS = 80_000_000  # decompression-bomb guard (a 4K image is ~16M pixels)

# EXIF orientations 5–8 rotate by 90°, which swaps width and height.
_EXIF_ORIENTATION = 0x0112
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")
_PLAIN_TO_RGB = ("1", "L", "CMYK", "YCbCr", "LAB", "HSV", "RGBX")


class BombError(ValueError):
    """The header claims more pixels than ``max_pixels`` (a decompression bomb)."""


class UnsupportedImageError(ValueError):
    """The file decodes but its pixels have no defined 8-bit RGB meaning (e.g. 32-bit float)."""


def open_image(src, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open a path, encoded bytes or a binary file object lazily, at its first frame.

    No pixel is decoded. Raises ``BombError`` when the header claims more than ``max_pixels``
    pixels, ``PIL.UnidentifiedImageError`` for data that is not an image, ``OSError`` for
    unreadable files.
    """
    if isinstance(src, (bytes, bytearray, memoryview)):
        src = io.BytesIO(bytes(src))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below
            im = Image.open(src)
    except Image.DecompressionBombError as e:
        raise BombError(f"{e} (max_pixels={max_pixels})") from e
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise BombError(f"{w}x{h} exceeds max_pixels={max_pixels}")
    if getattr(im, "n_frames", 1) > 1:
        im.seek(0)
    return im


def frame_count(im: Image.Image) -> int:
    """Frames (animations) or pages (multi-page TIFF) in an opened image; 1 for still images."""
    try:
        return int(getattr(im, "n_frames", 1) or 1)
    except Exception:  # noqa: BLE001 - a damaged frame table: only the first frame is used anyway
        return 1


def orientation_of(im: Image.Image) -> int:
    """EXIF orientation tag (1–8); 1 when absent or unreadable. Decodes no pixel.

    Pillow's PNG ``getexif()`` decodes the whole image to find an eXIf chunk stored after the image data;
    for a PNG not yet decoded the chunk is looked up by walking the chunk headers instead (same answer).
    """
    try:
        if im.format == "PNG" and "exif" not in im.info and getattr(im, "tile", None):  # not decoded yet
            exif = Image.Exif()
            exif.load(_png_exif_chunk(im.fp) or b"")
        else:
            exif = im.getexif()
        return int(exif.get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:  # noqa: BLE001 - broken EXIF is treated as upright
        return 1


def _png_exif_chunk(fp) -> bytes | None:
    """The data of a PNG's eXIf chunk wherever it is, seeking over the other chunks; fp's position kept."""
    pos = fp.tell()
    try:
        fp.seek(8)  # the PNG signature
        while True:
            head = fp.read(8)
            if len(head) < 8:
                return None
            length, kind = int.from_bytes(head[:4], "big"), head[4:]
            if kind == b"eXIf":
                return fp.read(length)
            if kind == b"IEND":
                return None
            fp.seek(length + 4, io.SEEK_CUR)  # data and CRC
    finally:
        fp.seek(pos)


def oriented_size(im: Image.Image) -> tuple[int, int]:
    """(width, height) after EXIF orientation, from the header."""
    w, h = im.size
    return (h, w) if orientation_of(im) in _SWAPPING_ORIENTATIONS else (w, h)


def upright(im: Image.Image) -> Image.Image:
    """EXIF orientation applied; no copy when the image is already upright."""
    return ImageOps.exif_transpose(im) if orientation_of(im) != 1 else im


@functools.lru_cache(maxsize=64)
def _foreign_profile(icc: bytes):
    """The parsed profile when it is usable and not sRGB, else None."""
    from PIL import ImageCms

    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        desc = (ImageCms.getProfileDescription(profile) or "").strip()
    except Exception:  # noqa: BLE001 - an unparsable profile is ignored (pixels taken as sRGB)
        return None
    return None if "srgb" in desc.lower() else profile


def needs_icc_conversion(im: Image.Image) -> bool:
    """True when the image embeds a parsable non-sRGB ICC profile that ``to_rgb8`` applies."""
    icc = im.info.get("icc_profile")
    return bool(icc) and im.mode in ("RGB", "RGBA", "CMYK") and _foreign_profile(bytes(icc)) is not None


def _apply_icc(im: Image.Image) -> Image.Image:
    if not needs_icc_conversion(im):
        return im
    from PIL import ImageCms

    src = _foreign_profile(bytes(im.info["icc_profile"]))
    out_mode = "RGBA" if im.mode == "RGBA" else "RGB"
    try:
        return ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode=out_mode)
    except Exception:  # noqa: BLE001 - a profile LittleCMS cannot apply to this mode: ignored
        return im


def to_rgb8(im: Image.Image) -> Image.Image:
    """Any PIL image → 8-bit RGB by the module's rules (16-bit scaled, ICC applied, alpha on white).

    Raises ``UnsupportedImageError`` for float images and integer images outside [0, 65535].
    """
    im = _apply_icc(im)
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in _SIXTEEN_BIT or mode == "I":
        a = np.asarray(im).astype(np.float64)
        if mode == "I" and a.size and (a.min() < 0 or a.max() > 65535):
            raise UnsupportedImageError(
                f"32-bit integer pixels in [{a.min():.0f}, {a.max():.0f}] have no defined display range "
                "(only 0..65535 is read as 16-bit); convert the file to 8- or 16-bit"
            )
        g = np.clip(np.round(a * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return Image.fromarray(g, "L").convert("RGB")
    if mode == "F":
        raise UnsupportedImageError(
            "32-bit float pixels have no defined display range; convert the file to 8- or 16-bit"
        )
    if mode in _PLAIN_TO_RGB or (mode == "P" and "transparency" not in im.info):
        return im.convert("RGB")
    rgba = im.convert("RGBA")  # P with transparency, PA, LA, La, RGBA, RGBa …
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def decode_rgb(src, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A path, bytes or file object → upright (H, W, 3) uint8 RGB array (H, W after EXIF).

    Raises ``BombError``, ``UnsupportedImageError`` or PIL's errors (``UnidentifiedImageError``,
    ``OSError`` for truncated data); callers skip and count those.
    """
    im = open_image(src, max_pixels)
    try:
        try:
            im.load()
        except OSError as e:  # truncated or corrupt pixel data: say which file
            if isinstance(src, (str, os.PathLike)):
                raise OSError(f"{e}: {src}") from e
            raise
        return np.array(to_rgb8(upright(im)), dtype=np.uint8)
    finally:
        im.close()


def load_rgb(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file to an upright (H, W, 3) uint8 RGB array; see ``decode_rgb``."""
    return decode_rgb(Path(path), max_pixels)


def probe_image(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) after EXIF transpose, reading the header and verifying the file.

    Raises ``OSError``/``SyntaxError``/``ValueError`` (from PIL) on unreadable or
    truncated files; ``Image.verify`` checks PNG chunk CRCs without decoding pixels.
    """
    with open_image(path) as im:
        im.verify()  # must come directly after open; the image is unusable afterwards
    with open_image(path) as im:
        return oriented_size(im)


# --- listing --------------------------------------------------------------------------------
def path_problem(path: str | os.PathLike) -> tuple[str, str] | None:
    """Why ``path`` is not a readable regular file, as ``(reason, detail)``; None when it is one.

    Reasons: ``missing_file``, ``symlink_loop`` (a link that resolves to itself), ``broken_symlink``,
    ``directory_named_like_image`` (any directory), ``not_a_regular_file`` (fifo, socket, device),
    ``unreadable`` (no permission).
    """
    try:
        st = os.stat(path)  # follows symlinks
    except OSError as e:
        if os.path.islink(path):
            target = os.readlink(path)
            if e.errno == errno.ELOOP:
                return "symlink_loop", f"the link to {target} resolves to itself"
            return "broken_symlink", f"the link target {target} does not exist"
        if e.errno == errno.EACCES:
            return "unreadable", str(e)
        return "missing_file", "listed but not found"
    if stat.S_ISDIR(st.st_mode):
        return "directory_named_like_image", "a folder, not an image file"
    if not stat.S_ISREG(st.st_mode):
        return "not_a_regular_file", f"file type {stat.S_IFMT(st.st_mode):o} (a fifo, socket or device)"
    if not os.access(path, os.R_OK):
        return "unreadable", "no read permission"
    return None


def scan_image_files(
    root: str | os.PathLike, extensions=IMAGE_EXTENSIONS, others: list[Path] | None = None
) -> tuple[list[Path], list[tuple[Path, str, str]]]:
    """Image files under ``root`` (recursive, sorted; symlinked folders followed) and what was passed over.

    Returns ``(files, skipped)``; ``skipped`` holds ``(path, reason, detail)`` for entries named like an
    image that are not readable files (reasons of ``path_problem``), for symlinks that loop back to a
    folder above them (``symlink_loop``) and for links or folders that cannot be read. Regular files
    with other suffixes are appended to ``others`` when a list is given.
    """
    root = Path(root)
    exts = tuple(e.lower() for e in extensions)
    files: list[Path] = []
    skipped: list[tuple[Path, str, str]] = []

    def walk(folder: Path, ancestors: frozenset) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            skipped.append((folder, "unreadable", f"cannot list the folder: {e}"))
            return
        for entry in entries:
            path = Path(entry.path)
            image_named = path.suffix.lower() in exts
            try:
                st = os.stat(path)
            except OSError:
                problem = path_problem(path)
                if problem is not None and (image_named or entry.is_symlink()):
                    skipped.append((path, *problem))
                continue
            if stat.S_ISDIR(st.st_mode):
                if (st.st_dev, st.st_ino) in ancestors:
                    above = os.path.realpath(path)
                    skipped.append((path, "symlink_loop", f"links back to {above}, a folder above it"))
                    continue
                if image_named:
                    detail = "a folder, not an image file (the files in it are read)"
                    skipped.append((path, "directory_named_like_image", detail))
                walk(path, ancestors | {(st.st_dev, st.st_ino)})
            elif image_named:
                problem = path_problem(path)
                if problem is None:
                    files.append(path)
                else:
                    skipped.append((path, *problem))
            elif others is not None and stat.S_ISREG(st.st_mode):
                others.append(path)

    if root.is_dir():
        st = os.stat(root)
        walk(root, frozenset({(st.st_dev, st.st_ino)}))
    return sorted(files), skipped


def list_image_files(root: str | os.PathLike, extensions=IMAGE_EXTENSIONS) -> list[Path]:
    """All image files under ``root`` (recursive, sorted); entries passed over are logged (see
    ``scan_image_files``)."""
    files, skipped = scan_image_files(root, extensions)
    if skipped:
        log.warning("%s: passed over %d entr(ies) named like images, e.g. %s: %s (%s)", root, len(skipped),
                    skipped[0][0], skipped[0][1], skipped[0][2])  # fmt: skip
    return files


def read_caption(path: str | os.PathLike) -> str:
    """Caption from a sidecar text file with the image's stem (``x.png`` → ``x.txt``), or ""."""
    txt = Path(path).with_suffix(".txt")
    return txt.read_text(encoding="utf-8").strip() if txt.is_file() else ""
