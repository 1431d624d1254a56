"""data_prep on odd files: animations keep their first frame, entries that are not image files are
listed with a reason, huge PDF pages render capped in seconds; a build over all of them keeps or
lists every file (issue 15, items 3-5)."""

from __future__ import annotations

import json
import os
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep import pdf_pages
from data_prep.build import build
from data_prep.ingest import ingest
from data_prep.records import read_jsonl
from data_prep.render_pdfs import render_pdfs
from pid.data.io import decode_rgb

RED, BLUE = (200, 30, 30), (20, 40, 220)


def _animation(path: Path, size: tuple[int, int], **save) -> None:
    first, second = Image.new("RGB", size, RED), Image.new("RGB", size, BLUE)
    first.save(path, save_all=True, append_images=[second], duration=100, loop=0, **save)


def _huge_pdf(path: Path, side_pt: float = 14400) -> None:
    from reportlab.pdfgen import canvas

    c = canvas.Canvas(str(path), pagesize=(side_pt, side_pt))
    c.setFont("Helvetica", 240)
    for i in range(4):
        c.drawString(1200, side_pt - 2000 - 600 * i, f"line {i} of a very large page")
    c.save()


def _odd_folder(root: Path) -> Path:
    img = root / "images"
    img.mkdir()
    _animation(img / "anim.gif", (2200, 1500))  # the input
    _animation(img / "anim.webp", (96, 64), lossless=True)  # another animated container
    (img / "folder.jpg").mkdir()
    Image.new("RGB", (80, 64), (90, 140, 60)).save(img / "folder.jpg" / "inside.png")
    os.symlink("loop.png", img / "loop.png")  # a link to itself
    os.symlink("..", img / "folder.jpg" / "up")  # a folder link back above itself
    os.symlink("missing.jpg", img / "gone.jpg")
    (img / "notes.md").write_text("not an image")
    return img


def _drops(work: Path) -> dict[str, str]:
    rows = [r for p in sorted(work.glob("*.dropped.jsonl")) for r in read_jsonl(p)]
    return {Path(r["path"]).name: r["reason"] for r in rows}


def test_animations_keep_their_first_frame_and_odd_entries_are_listed(tmp_path):
    img = _odd_folder(tmp_path)
    ingest(tmp_path / "w", [img], verbose=False)
    kept = {Path(r["path"]).name: r for r in read_jsonl(tmp_path / "w" / "ingest.jsonl")}
    assert set(kept) == {"anim.gif", "anim.webp", "inside.png"}
    for name in ("anim.gif", "anim.webp"):
        assert "first frame of 2" in kept[name]["convert"], kept[name]
    assert (kept["anim.gif"]["width"], kept["anim.gif"]["height"]) == (2200, 1500)
    assert decode_rgb(Path(kept["anim.webp"]["path"]))[0, 0].tolist() == list(RED)
    assert _drops(tmp_path / "w") == {
        "folder.jpg": "directory_named_like_image", "loop.png": "symlink_loop", "up": "symlink_loop",
        "gone.jpg": "broken_symlink", "notes.md": "not_an_image_suffix",
    }  # fmt: skip


def test_a_huge_pdf_page_renders_capped_in_seconds(tmp_path):
    pdfs = tmp_path / "pdfs"
    pdfs.mkdir()
    _huge_pdf(pdfs / "huge.pdf")
    start = time.perf_counter()
    assert render_pdfs(tmp_path / "w", [pdfs], dpi=150, verbose=False) == {"kept": 1, "dropped": 0}
    assert time.perf_counter() - start < 60
    (rec,) = read_jsonl(tmp_path / "w" / "pdf.jsonl")
    assert rec["width"] * rec["height"] <= pdf_pages.MAX_RENDER_PIXELS
    assert rec["meta"]["dpi"] < 150 and rec["meta"]["dpi_requested"] == 150
    assert "30000x30000 px" in rec["meta"]["render_capped"]
    # another target: the sample set's page renderer applies the same cap
    rgb = pdf_pages.render_page(pdfs / "huge.pdf", 0, dpi=150, max_pixels=250_000)
    assert rgb.shape == (500, 500, 3) and rgb.min() < 128  # text drawn, at the capped size
    with pytest.raises(ValueError, match="no area"):
        pdf_pages.render_scale(0, 100, 150)


def _gray16_png(path: Path) -> None:
    ramp = np.round(np.linspace(0, 65535, 64)).astype(np.uint16)[None].repeat(64, 0)
    Image.fromarray(ramp).save(path)


def test_a_build_over_every_odd_case_keeps_or_lists_every_file(tmp_path):
    img = _odd_folder(tmp_path)
    _gray16_png(img / "gray16.png")
    Image.fromarray(np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)).save(img / "float.tif")
    (img / "gray16.txt").write_text("a grey ramp")
    pdfs = tmp_path / "pdfs"
    pdfs.mkdir()
    _huge_pdf(pdfs / "huge.pdf")
    start = time.perf_counter()
    build(tmp_path / "work", tmp_path / "out", folders=[img], pdfs=[pdfs], scorers=("sharpness",),
          bucket_kind="single", base_size=64, multiple=32, verbose=False)  # fmt: skip
    elapsed = time.perf_counter() - start
    assert elapsed < 120, elapsed
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    listed = {Path(d["path"]).name: d["reason"] for d in report["dropped_inputs"]}
    manifest = read_jsonl(tmp_path / "out" / "manifest.jsonl")
    kept = {Path(m["origin"]).name for m in manifest if m["source"] != "pdf"}
    assert kept == {"anim.gif", "anim.webp", "inside.png", "gray16.png"}
    pdf_pages = [m["meta"]["pdf"] for m in manifest if m["source"] == "pdf"]
    assert pdf_pages == [str((pdfs / "huge.pdf").resolve())]
    assert listed["float.tif"] == "unsupported_pixels"
    # every entry under the folder is kept, listed with its reason, or the caption sidecar of an image
    for dirpath, dirnames, filenames in os.walk(img):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_dir() and not p.is_symlink() and name != "folder.jpg":
                continue
            assert name in kept or name in listed or name == "gray16.txt", name
    gray = next(m for m in manifest if m["origin"].endswith("gray16.png"))
    with tarfile.open(tmp_path / "out" / f"{gray['shard']}.tar") as tar:
        stored = tar.extractfile(f"{gray['key']}.png").read()
    assert decode_rgb(stored)[0, [0, 32, 63], 0].tolist() == [0, 130, 255]
    huge = next(m for m in manifest if m["source"] == "pdf")
    assert "render_capped" in huge["meta"]
    print(f"build over every odd case: {elapsed:.1f} s")

