"""The offline sample image set: real sources, held-out split, idempotence, safety."""

import json

import numpy as np
import pytest
from PIL import Image

import data_prep.sample_set as ss
from data_prep.sample_set import build_sample_set, skimage_candidates, split_groups
from pid.utils.errors import PiDConfigError


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample_set")
    # all skimage photos plus one generated PDF (no real PDFs searched), rendered at low dpi
    manifest = build_sample_set(
        out, sources=("skimage", "pdf"), pdf_dirs=(), generated_pdfs=1, pages_per_pdf=2, dpi=60,
        min_side=256, verbose=False,
    )  # fmt: skip
    return out, manifest


def test_builds_real_images_with_manifest(built):
    out, manifest = built
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["complete"]
    sources = {item["source"] for item in manifest["images"]}
    assert sources == {"skimage", "pdf"}
    assert manifest["counts"]["train"] > 0 and manifest["counts"]["val"] > 0
    for item in manifest["images"]:
        with Image.open(out / item["file"]) as im:
            assert im.mode == "RGB" and im.size == (item["width"], item["height"])
            assert min(im.size) >= 256
        assert (out / item["file"]).parent.name == item["split"]
        assert (out / item["file"]).with_suffix(".txt").read_text().strip() == item["caption"]
    astronaut = next(i for i in manifest["images"] if i["key"] == "skimage_astronaut")
    import skimage.data as skd

    assert np.array_equal(np.asarray(Image.open(out / astronaut["file"])), skd.astronaut())


def test_val_is_held_out_by_source_image(built):
    _, manifest = built
    split_of_group: dict[str, set[str]] = {}
    for item in manifest["images"]:
        split_of_group.setdefault(item["group"], set()).add(item["split"])
    assert all(len(splits) == 1 for splits in split_of_group.values())
    # the two views of the stereo pair are one group, and both PDF pages come from one document
    stereo = [i for i in manifest["images"] if i["key"].startswith("skimage_stereo_motorcycle")]
    assert len(stereo) == 2 and stereo[0]["group"] == stereo[1]["group"]
    pdf = [i for i in manifest["images"] if i["source"] == "pdf"]
    assert len(pdf) == 2 and len({i["group"] for i in pdf}) == 1
    train = {i["key"] for i in manifest["images"] if i["split"] == "train"}
    val = {i["key"] for i in manifest["images"] if i["split"] == "val"}
    assert train and val and not train & val


def test_second_call_returns_without_work(built, monkeypatch):
    out, manifest = built
    mtime = (out / "manifest.json").stat().st_mtime_ns

    def boom(*_a, **_k):
        raise AssertionError("a complete set must not be rebuilt")

    monkeypatch.setattr(ss, "skimage_candidates", boom)
    monkeypatch.setattr(ss, "pdf_candidates", boom)
    assert build_sample_set(out, sources=("skimage", "pdf"), verbose=False) == manifest
    assert (out / "manifest.json").stat().st_mtime_ns == mtime


def test_incomplete_set_is_rebuilt(tmp_path):
    first = build_sample_set(tmp_path, sources=("skimage",), max_images=3, min_side=128, verbose=False)
    (tmp_path / first["images"][0]["file"]).unlink()
    assert ss.read_manifest(tmp_path) is None
    again = build_sample_set(tmp_path, sources=("skimage",), max_images=3, min_side=128, verbose=False)
    assert [i["key"] for i in again["images"]] == [i["key"] for i in first["images"]]
    assert all((tmp_path / i["file"]).is_file() for i in again["images"])


def test_split_is_deterministic_and_by_group():
    groups = {"a": {f"a/{i}" for i in range(10)}, "b": {"b/0"}}
    val = split_groups(groups, 0.2, seed=0)
    assert val == split_groups(groups, 0.2, seed=0)
    assert len(val & groups["a"]) == 2 and not val & groups["b"]
    assert split_groups({"x": {"only"}, "y": {"other"}}, 0.2)  # never an empty val with >= 2 groups


def test_max_images_and_min_side(tmp_path):
    manifest = build_sample_set(tmp_path, sources=("skimage",), max_images=4, min_side=480, verbose=False)
    assert len(manifest["images"]) == 4
    assert all(min(i["width"], i["height"]) >= 480 for i in manifest["images"])
    assert any("min_side" in s["reason"] for s in manifest["skipped"])


def test_wallpapers_keep_largest_size_and_skip_tiny(tmp_path):
    walls = tmp_path / "walls"
    rng = np.random.default_rng(0)
    for w, h in ((320, 240), (640, 480)):  # plasma layout: one picture in several sizes
        p = walls / "Flow" / "contents" / "images" / f"{w}x{h}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(p)
    Image.fromarray(rng.integers(0, 255, (100, 120, 3), dtype=np.uint8)).save(walls / "tiny.png")
    Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(walls / "mate.jpg")
    out = tmp_path / "out"
    manifest = build_sample_set(
        out, sources=("wallpaper",), wallpaper_dirs=[walls], min_side=200, verbose=False
    )
    sizes = sorted((i["width"], i["height"]) for i in manifest["images"])
    assert sizes == [(400, 300), (640, 480)]
    assert len(manifest["skipped"]) == 1 and "tiny" in manifest["skipped"][0]["key"]


def test_refuses_to_overwrite_foreign_images(tmp_path):
    (tmp_path / "train").mkdir()
    Image.new("RGB", (300, 300)).save(tmp_path / "train" / "mine.png")
    with pytest.raises(PiDConfigError, match="refusing"):
        build_sample_set(tmp_path, sources=("skimage",), max_images=2, verbose=False)
    assert (tmp_path / "train" / "mine.png").is_file()


def test_skimage_candidates_are_rgb_photos():
    cands = skimage_candidates()
    assert len(cands) >= 10
    rgb = cands[0].load()
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
