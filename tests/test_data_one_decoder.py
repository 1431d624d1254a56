"""One decoder: every path that turns a file into pixels gives the same pixels (issue 15, item 3)."""

from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep.probe import Rejected, probe_image_file
from data_prep.score import load_for_scoring
from data_prep.shards import payload
from pid.data.buckets import BucketSet, single_level
from pid.data.image_folder import FixedCropDataset, ImageCropDataset
from pid.data.io import UnsupportedImageError, decode_rgb, load_rgb
from pid.data.shard_val import FixedCropShardDataset, cover_square
from pid.data.transforms import bucket_crop
from pid.latents.stats import iter_source_images

SIDE = 64
RAMP16 = np.round(np.linspace(0, 65535, SIDE)).astype(np.uint16)[None].repeat(SIDE, 0)  # 0..65535 by column


def _rgb(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)


def _gray16_png(path: Path) -> None:
    Image.fromarray(RAMP16).save(path)


def _gray16_ppm(path: Path) -> None:  # another container: PIL reads it as mode "I"
    path.write_bytes(f"P5 {SIDE} {SIDE} 65535\n".encode() + RAMP16.astype(">u2").tobytes())


def _gray16_tiff(path: Path) -> None:
    Image.fromarray(RAMP16).save(path, format="TIFF")


def _palette_alpha_png(path: Path) -> None:
    pal = Image.fromarray(_rgb(1)).quantize(16)
    pal.save(path, transparency=0)


def _la_png(path: Path) -> None:
    alpha = np.tile(np.linspace(0, 255, SIDE).astype(np.uint8), (SIDE, 1))
    la = np.stack([np.full((SIDE, SIDE), 40, np.uint8), alpha], -1)
    Image.fromarray(la, "LA").save(path)


def _cmyk_jpeg(path: Path) -> None:
    Image.fromarray(_rgb(2)).convert("CMYK").save(path, quality=95)


def _two_frame_gif(path: Path) -> None:
    red = Image.new("RGB", (SIDE, SIDE), (255, 0, 0))
    blue = Image.new("RGB", (SIDE, SIDE), (0, 0, 255))
    red.save(path, save_all=True, append_images=[blue], duration=100, loop=0)


def _exif_jpeg(path: Path) -> None:
    a = _rgb(3)
    a[:8, :8] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a).save(path, quality=95, exif=exif)


FILES = {
    "gray16.png": _gray16_png, "gray16.ppm": _gray16_ppm, "gray16.tif": _gray16_tiff,
    "palette_alpha.png": _palette_alpha_png, "gray_alpha.png": _la_png, "cmyk.jpg": _cmyk_jpeg,
    "two_frames.gif": _two_frame_gif, "exif6.jpg": _exif_jpeg,
}  # fmt: skip


def _hwc(item: dict) -> np.ndarray:
    return item["image"].permute(1, 2, 0).numpy()


def _every_path(path: Path, tmp: Path) -> dict[str, np.ndarray]:
    """The pixels of ``path`` as each loader of pid and data_prep gives them."""
    data = path.read_bytes()
    out = {"load_rgb": load_rgb(path), "decode_rgb(bytes)": decode_rgb(data)}
    exact = BucketSet(single_level(SIDE, 16))
    out["bucket_crop"] = bucket_crop(data, exact, random.Random(0), mode="crop", hflip=False)[0]
    out["cover_square"] = cover_square(data, SIDE)
    out["score"] = np.asarray(load_for_scoring(str(path), 1024))
    folder = tmp / f"folder_{path.stem}_{path.suffix[1:]}"
    folder.mkdir()
    (folder / path.name).write_bytes(data)
    out["image_folder_val"] = _hwc(FixedCropDataset(folder, SIDE, crops_per_image=1)[0])
    out["image_folder_train"] = _hwc(ImageCropDataset(folder, SIDE, hflip=False)[0])
    out["latent_stats"] = next(iter_source_images([folder]))[1]
    record = probe_image_file(path)
    ext, stored = payload(record)
    out["data_prep_shard"] = decode_rgb(stored)
    shard = tmp / f"shard_{path.stem}_{path.suffix[1:]}"
    shard.mkdir()
    with tarfile.open(shard / "s-000000.tar", "w") as tar:
        info = tarfile.TarInfo(f"k.{ext}")
        info.size = len(stored)
        tar.addfile(info, io.BytesIO(stored))
    out["shard_val"] = _hwc(FixedCropShardDataset(str(shard), SIDE, 1, crop_mode="crop")[0])
    return out


@pytest.mark.parametrize("name", sorted(FILES))
def test_every_loader_gives_the_same_pixels(name, tmp_path):
    path = tmp_path / name
    FILES[name](path)
    pixels = _every_path(path, tmp_path)
    ref = pixels["load_rgb"]
    assert ref.dtype == np.uint8 and ref.shape == (SIDE, SIDE, 3)
    for where, arr in pixels.items():
        assert arr.shape == ref.shape, where
        np.testing.assert_array_equal(arr, ref, err_msg=where)
    if name.startswith("gray16"):
        # the input: 98.4 % of the pixels came out 255 through load_rgb
        assert ref[0, [0, 32, 63], 0].tolist() == [0, 130, 255]
        assert (ref == 255).mean() < 0.02
    if name == "two_frames.gif":
        assert ref[0, 0].tolist() == [255, 0, 0]  # the first frame
    if name == "palette_alpha.png":
        index0 = np.asarray(Image.open(path)) == 0
        assert index0.any() and (ref[index0] == 255).all()  # transparent → white
    if name == "gray_alpha.png":
        assert ref[0, 0].tolist() == [255, 255, 255] and ref[0, -1].tolist() == [40, 40, 40]
    if name == "exif6.jpg":
        assert ref[:6, -6:, 0].mean() > 180 and ref[:6, -6:, 1].mean() < 90  # marker moved top-right


def test_pixels_without_a_display_range_are_refused_with_the_reason(tmp_path):
    path = tmp_path / "float.tif"
    Image.fromarray(np.linspace(0, 1, SIDE * SIDE, dtype=np.float32).reshape(SIDE, SIDE)).save(path)
    with pytest.raises(UnsupportedImageError, match="float pixels have no defined display range"):
        load_rgb(path)
    with pytest.raises(Rejected) as err:
        probe_image_file(path)
    assert err.value.reason == "unsupported_pixels"


def _png_with_exif_orientation(where: str) -> bytes:
    """A 60×40 PNG with EXIF orientation 6 in an eXIf chunk before or after the image data ("none": none)."""
    arr = np.zeros((40, 60, 3), np.uint8)
    arr[:10] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", **({} if where == "none" else {"exif": exif.tobytes()}))
    data = buf.getvalue()
    chunks, i = [], 8
    while i < len(data):
        n = int.from_bytes(data[i:i + 4], "big")
        chunks.append(data[i:i + 12 + n])
        i += 12 + n
    if where == "after":
        exif_chunk = [c for c in chunks if c[4:8] == b"eXIf"]
        chunks = [c for c in chunks if c[4:8] != b"eXIf"]
        chunks = chunks[:-1] + exif_chunk + chunks[-1:]  # between the last IDAT and IEND
    return data[:8] + b"".join(chunks)


@pytest.mark.parametrize("where,oriented", [("before", (40, 60)), ("after", (40, 60)), ("none", (60, 40))])
def test_png_orientation_is_read_without_decoding_the_pixels(where, oriented, monkeypatch):
    """oriented_size reads a PNG's EXIF orientation wherever its eXIf chunk is, decoding no pixel (Pillow's
    PNG getexif() decodes the whole image), and agrees with the decoded image."""
    from PIL import PngImagePlugin

    from pid.data.io import open_image, orientation_of, oriented_size

    data = _png_with_exif_orientation(where)
    decodes = []
    real = PngImagePlugin.PngImageFile.load_prepare
    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load_prepare",
                        lambda self, *a, **k: decodes.append(1) or real(self, *a, **k))
    im = open_image(data)
    assert oriented_size(im) == oriented and orientation_of(im) == (1 if where == "none" else 6)
    assert decodes == []
    assert decode_rgb(data).shape[1::-1] == oriented


def test_a_truncated_file_is_named_in_the_decode_error(tmp_path):
    data = _png_with_exif_orientation("none")
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match="cut.png"):
        load_rgb(path)
