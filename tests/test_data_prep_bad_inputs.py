"""data_prep on a folder of bad inputs mixed with good ones: no crash, every bad one reported with its
reason, every good one (including awkward-but-valid files, converted) in the shards, upright."""

from __future__ import annotations

import json
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep.build import build
from pid.data.transforms import decode_rgb

from conftest import photo

SIDE = 64


def _photo(name: str, w: int = 80, h: int = 64) -> np.ndarray:
    return photo(name, (w, h))


def _bomb_png(path: Path, side: int = 100_000) -> None:
    """A valid PNG header claiming side × side pixels (10 G px) with a tiny body."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory) -> tuple[Path, Path, dict, dict]:
    root = tmp_path_factory.mktemp("bad_inputs")
    img, pdf = root / "images", root / "pdfs"
    img.mkdir()
    pdf.mkdir()
    good, bad = {}, {}
    # good, plain
    Image.fromarray(_photo("astronaut")).save(img / "good_astronaut.jpg", quality=92)
    Image.fromarray(_photo("coffee")).save(img / "good_coffee.png")
    (img / "good_coffee.txt").write_text("a cup of coffee")
    good.update(good_astronaut=None, good_coffee=None)
    # awkward but valid: converted, kept
    Image.fromarray(_photo("chelsea")).convert("CMYK").save(img / "cmyk.jpg", quality=92)
    g16 = (np.linspace(0, 65535, SIDE * 80).reshape(SIDE, 80)).astype(np.uint16)
    Image.fromarray(g16).save(img / "gray16.png")
    assert Image.open(img / "gray16.png").mode.startswith("I")
    pal = Image.fromarray(_photo("rocket")).convert("P", palette=Image.ADAPTIVE, colors=32)
    pal.info["transparency"] = 0
    pal.save(img / "palette_alpha.png", transparency=0)
    # EXIF orientation 6 (rotate 90° CW to view): stored 80 wide × 64 high, shown 64 × 80.
    stored = _photo("astronaut", 80, 64).copy()
    stored[:8, :8] = (255, 0, 0)  # red marker at stored top-left → must end up at the top-right
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(img / "exif_rotated.jpg", quality=95, exif=exif)
    good.update(cmyk="cmyk", gray16="16bit", palette_alpha="palette", exif_rotated="exif")
    # bad
    data = (img / "good_astronaut.jpg").read_bytes()
    (img / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (img / "zero.jpg").write_bytes(b"")
    Image.new("RGB", (1, 1), (10, 20, 30)).save(img / "one_pixel.png")
    _bomb_png(img / "bomb.png")
    (img / "text.jpg").write_text("this is not an image\n" * 10)
    bad.update(truncated="truncated", zero="zero_byte", one_pixel="too_small", bomb="decompression_bomb",
               text="not_an_image")  # fmt: skip
    # PDFs: one good, one encrypted, one corrupt
    from reportlab.pdfgen import canvas

    c = canvas.Canvas(str(pdf / "good.pdf"), pagesize=(200, 200))
    c.setFont("Helvetica", 14)
    c.drawString(20, 100, "Hello, small text.")
    c.save()
    c = canvas.Canvas(str(pdf / "encrypted.pdf"), pagesize=(200, 200), encrypt="secret")
    c.drawString(20, 100, "secret")
    c.save()
    (pdf / "corrupt.pdf").write_bytes(b"%PDF-1.4\n1 0 obj garbage\n%%EOF")
    bad.update(encrypted="encrypted_pdf", corrupt="broken_pdf")
    return img, pdf, good, bad


def _read_shards(out: Path) -> dict[str, dict]:
    samples: dict[str, dict] = {}
    for tar_path in sorted(out.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return samples


def test_bad_inputs_are_reported_and_good_ones_sharded(bad_folder, tmp_path):
    img, pdf, good, bad = bad_folder
    index = build(
        tmp_path / "work",
        tmp_path / "out",
        folders=[img],
        pdfs=[pdf],
        scorers=("sharpness",),
        dpi=72,
        bucket_kind="single",
        base_size=SIDE,
        multiple=32,
        shard_bytes=20_000,
        verbose=False,
    )
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    by_stem = {Path(d["path"]).stem: d["reason"] for d in report["dropped_inputs"]}
    for stem, reason in bad.items():
        assert by_stem.get(stem) == reason, (stem, by_stem)
    assert report["dropped"] == len(bad)

    samples = _read_shards(out)
    keys = set(samples)
    for stem in good:
        assert any(k.endswith(stem) for k in keys), (stem, keys)
    assert any(k.startswith("pdf_good") for k in keys)
    assert index["count"] == len(samples) == len(good) + 1
    assert len(list(out.glob("*.tar"))) >= 2  # the target shard size split the set

    converted = {Path(c["path"]).stem: c["convert"] for c in report["converted"]}
    for stem, word in good.items():
        if word is not None:
            assert word in converted[stem], (stem, converted)
    for name in (
        "hist_aspect.png",
        "hist_size.png",
        "hist_score_sharpness.png",
        "report.md",
        "manifest.jsonl",
    ):
        assert (out / name).is_file(), name

    # bytes kept as they are when possible; awkward inputs became upright 8-bit RGB PNGs
    astro = next(s for k, s in samples.items() if k.endswith("good_astronaut"))
    assert astro["jpg"] == (img / "good_astronaut.jpg").read_bytes()
    coffee = next(s for k, s in samples.items() if k.endswith("good_coffee"))
    assert coffee["txt"].decode() == "a cup of coffee"
    rot = decode_rgb(next(s for k, s in samples.items() if k.endswith("exif_rotated"))["png"])
    assert rot.shape == (80, 64, 3)  # upright: 64 wide, 80 high
    top_right = rot[:6, -6:].astype(int).mean(axis=(0, 1))
    assert top_right[0] > 180 and top_right[1] < 90 and top_right[2] < 90, top_right
    g16 = decode_rgb(next(s for k, s in samples.items() if k.endswith("gray16"))["png"])
    assert g16.dtype == np.uint8 and g16.max() >= 250 and g16.min() <= 5  # scaled, not clipped
    pal = decode_rgb(next(s for k, s in samples.items() if k.endswith("palette_alpha"))["png"])
    assert pal.shape[-1] == 3


def test_duplicates_and_score_threshold_are_separate_rerunnable_steps(bad_folder, tmp_path):
    from data_prep.filter import filter_records
    from data_prep.ingest import ingest
    from data_prep.score import score
    from pid.data.buckets import make_buckets

    img, _, _, _ = bad_folder
    folder = tmp_path / "dups"
    folder.mkdir()
    for name in ("good_astronaut.jpg", "good_coffee.png"):
        (folder / name).write_bytes((img / name).read_bytes())
    (folder / "copy_of_astronaut.jpg").write_bytes((img / "good_astronaut.jpg").read_bytes())
    work = tmp_path / "w"
    ingest(work, [folder], verbose=False)
    score(work, ["sharpness"], verbose=False)
    buckets = make_buckets("single", SIDE, 32)
    assert filter_records(work, buckets, verbose=False)["kept"] == 2
    drops = [json.loads(line) for line in (work / "filter.dropped.jsonl").read_text().splitlines()]
    assert [d["reason"] for d in drops] == ["duplicate"]
    # a stricter threshold on the stored scores: nothing is re-scored
    res = filter_records(work, buckets, min_scores=["sharpness=1e12"], verbose=False)
    assert res["kept"] == 0
    # too small for 2048 buckets: dropped with a reason, never upsampled
    assert filter_records(work, make_buckets("single"), verbose=False)["kept"] == 0
    assert "too_small" in (work / "filter.dropped.jsonl").read_text()


def test_qalign_needs_a_local_path_and_an_explicit_remote_code_flag(tmp_path):
    from pid.eval.qalign import LEVELS, QAlignScorer, expected_level

    with pytest.raises(FileNotFoundError, match="qalign-path"):
        QAlignScorer(str(tmp_path / "missing"))
    (tmp_path / "config.json").write_text(json.dumps({"auto_map": {"AutoModelForCausalLM": "x.Y"}}))
    with pytest.raises(PermissionError, match="trust-remote-code"):
        QAlignScorer(str(tmp_path))
    assert QAlignScorer(str(tmp_path), trust_remote_code=True).path == str(tmp_path)  # loads lazily
    assert len(LEVELS) == 5
    np.testing.assert_allclose(expected_level([[50.0, 0, 0, 0, 0], [0, 0, 0, 0, 50.0]]), [5.0, 1.0])
    np.testing.assert_allclose(expected_level(np.zeros(5)), 3.0)


def _niqe_model_installed() -> bool:
    from pid.eval.niqe import params_path

    try:
        return params_path().is_file()
    except FileNotFoundError:
        return False


@pytest.mark.skipif(
    not _niqe_model_installed(), reason="needs the wheel absolutely-not-scikit-video (NIQE model)"
)
def test_niqe_matches_reference_and_ranks_blur_worse():
    import skimage.data as sd
    from scipy.ndimage import gaussian_filter

    from pid.eval.niqe import niqe

    cam = sd.camera().astype(np.float32)
    sharp, blurred = niqe(cam), niqe(gaussian_filter(cam, 3))
    assert sharp == pytest.approx(9.0707, abs=0.02)  # scikit-video's niqe() on the same image: 9.0707
    assert blurred > sharp
    with pytest.raises(ValueError):
        niqe(cam[:100, :100])


def test_multiaspect_layouts(tmp_path):
    from data_prep.ingest import ingest
    from data_prep.records import read_jsonl

    root = tmp_path / "MultiAspect-4K-1M"
    (root / "data_jsons").mkdir(parents=True)
    (root / "image").mkdir()
    Image.fromarray(_photo("coffee")).save(root / "image" / "000001_000000.jpg")
    recs = [{"image_url": "https://example.org/a.jpg", "en_caption": "a coffee cup", "zh_caption": "咖啡",
             "aesthetic_score": 6.1},
            {"image_url": "https://example.org/b.jpg", "en_caption": "not downloaded"}]  # fmt: skip
    (root / "data_jsons" / "000001.json").write_text(json.dumps(recs))
    ingest(tmp_path / "w1", multiaspect=[root], verbose=False)
    rows = read_jsonl(tmp_path / "w1" / "ingest.jsonl")
    assert len(rows) == 1 and rows[0]["captions"]["long"] == "a coffee cup"
    assert rows[0]["meta"]["aesthetic_score"] == 6.1 and rows[0]["meta"]["zh_caption"] == "咖啡"
    assert "not_downloaded" in (tmp_path / "w1" / "ingest.dropped.jsonl").read_text()
    # the downloaded layout: image/<uid>.jpg + caption/<uid>.json with three caption lengths
    dl = tmp_path / "download"
    (dl / "image").mkdir(parents=True)
    (dl / "caption").mkdir()
    Image.fromarray(_photo("rocket")).save(dl / "image" / "u1.jpg")
    (dl / "caption" / "u1.json").write_text(
        json.dumps({"prompt": "L", "prompt_medium": "M", "prompt_short": "S"})
    )
    ingest(tmp_path / "w2", multiaspect=[dl], verbose=False)
    (row,) = read_jsonl(tmp_path / "w2" / "ingest.jsonl")
    assert row["captions"] == {"long": "L", "medium": "M", "short": "S"}
