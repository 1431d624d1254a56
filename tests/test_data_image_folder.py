"""Crop datasets and the image-folder DataModule: no upsampling, corrupt files, determinism."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from data_prep.sample_set import build_sample_set
from pid.data.datamodule import ImageFolderDataModule
from pid.data.image_folder import FixedCropDataset, ImageCropDataset, grid_positions
from pid.data.io import load_rgb, probe_image

from conftest import photo

CROP = 64


def _noise(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture()
def folder(tmp_path):
    """Two good images, one too small, a truncated PNG, random bytes, and an EXIF-rotated JPEG."""
    Image.fromarray(_noise(80, 96, 0)).save(tmp_path / "big.png")
    Image.fromarray(_noise(70, 64, 1)).save(tmp_path / "tall.png")
    (tmp_path / "big.txt").write_text("a caption\n")
    Image.fromarray(_noise(40, 200, 2)).save(tmp_path / "small.png")  # shorter side < crop
    buf = io.BytesIO()
    Image.fromarray(_noise(90, 90, 3)).save(buf, format="PNG")
    (tmp_path / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (tmp_path / "garbage.jpg").write_bytes(b"not an image at all" * 10)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: stored 100×50 (w×h) is shown 50×100
    Image.fromarray(_noise(50, 100, 4)).save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    return tmp_path


def test_probe_applies_exif_orientation(folder):
    assert probe_image(folder / "rotated.jpg") == (50, 100)
    assert load_rgb(folder / "rotated.jpg").shape == (100, 50, 3)


def test_train_crops_skip_small_and_corrupt_never_upsample(folder, caplog):
    with pytest.warns(UserWarning, match="corrupt"):
        ds = ImageCropDataset(folder, CROP)
    assert sorted(r.key for r in ds.records) == ["big", "tall"]
    assert len(ds.skipped["too_small"]) == 2  # small.png and rotated.jpg (50 px wide once upright)
    assert len(ds.skipped["corrupt"]) == 2  # truncated.png, garbage.jpg
    assert "never upsampled" in " ".join(ds.skipped["too_small"])
    source = {name: np.array(Image.open(folder / f"{name}.png")) for name in ("big", "tall")}
    torch.manual_seed(0)
    flips = 0
    for i in range(40):
        item = ds[i % len(ds)]
        img = item["image"]
        assert img.dtype == torch.uint8 and img.shape == (3, CROP, CROP)
        name, yx = item["key"].split("@")
        y, x = map(int, yx.split(","))
        ref = torch.from_numpy(source[name][y : y + CROP, x : x + CROP]).permute(2, 0, 1)
        flipped = not torch.equal(img, ref)
        assert torch.equal(img, ref.flip(-1) if flipped else ref)  # an exact crop, maybe mirrored
        flips += flipped
        assert item["caption"] == ("a caption" if name == "big" else "")
    assert 5 < flips < 35


def test_decode_failure_after_indexing_is_skipped_with_count(tmp_path):
    Image.fromarray(_noise(64, 64, 0)).save(tmp_path / "a_good.png")
    buf = io.BytesIO()
    Image.fromarray(_noise(96, 96, 1)).save(buf, format="JPEG", quality=95)
    # a truncated JPEG passes header checks and fails only when decoded
    (tmp_path / "b_cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    ds = ImageCropDataset(tmp_path, CROP, hflip=False)
    if len(ds) == 1:
        pytest.skip("this PIL rejects the truncated JPEG at index time already")
    idx = [r.key for r in ds.records].index("b_cut")
    with pytest.warns(UserWarning, match="cannot decode"):
        item = ds[idx]
    assert item["key"].startswith("a_good")
    assert ds.decode_failures == 1
    ds[idx]  # remembered: no second failure
    assert ds.decode_failures == 1


def test_fixed_crops_are_deterministic_grid(folder):
    with pytest.warns(UserWarning):
        a = FixedCropDataset(folder, CROP, crops_per_image=4)
    with pytest.warns(UserWarning):
        b = FixedCropDataset(folder, CROP, crops_per_image=4)
    assert len(a) == 8
    for i in range(len(a)):
        assert a[i]["key"] == b[i]["key"] and torch.equal(a[i]["image"], b[i]["image"])
    keys = [a[i]["key"] for i in range(4)]
    assert keys == ["big@0,0", "big@0,32", "big@16,0", "big@16,32"]  # corners of an 80×96 image


def test_grid_positions_cover_image_and_stay_inside():
    pos = grid_positions(300, 500, 64, 64, 6)
    assert len(pos) == 6 and len(set(pos)) == 6
    assert (0, 0) in pos and (236, 436) in pos
    assert all(0 <= y <= 236 and 0 <= x <= 436 for y, x in pos)
    assert grid_positions(100, 100, 64, 64, 1) == [(18, 18)]


def test_datamodule_batches_from_the_sample_set(tmp_path):
    root = tmp_path / "data"
    build_sample_set(root, sources=("skimage",), max_images=6, val_fraction=0.34, verbose=False)
    dm = ImageFolderDataModule(str(root), crop_size=CROP, batch_size=3, num_workers=0, val_crops_per_image=2)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (3, 3, CROP, CROP)
    assert len(batch["caption"]) == 3 and all(isinstance(c, str) and c for c in batch["caption"])
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape[1:] == (3, CROP, CROP)
    assert len(dm.val_set) == 2 * len(dm.val_set.records) > 0


def test_datamodule_never_builds_and_leaves_user_folder_alone(tmp_path):
    (tmp_path / "train").mkdir()
    Image.fromarray(_noise(70, 70, 0)).save(tmp_path / "train" / "x.png")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    dm = ImageFolderDataModule(str(tmp_path), crop_size=CROP, batch_size=1, num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set) == 1 and len(dm.val_set) == 0
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_datamodule_without_images_names_the_fix(tmp_path):
    from pid.utils.errors import PiDConfigError

    dm = ImageFolderDataModule(str(tmp_path), crop_size=CROP, num_workers=0)
    with pytest.raises(PiDConfigError, match="make data"):
        dm.prepare_data()
    assert not any(tmp_path.iterdir())  # nothing was built
    with pytest.raises(PiDConfigError, match="data.root"):
        dm.setup("fit")


def test_shard_datamodule_without_shards_names_the_fix(tmp_path):
    from pid.data.shard_datamodule import ShardDataModule
    from pid.utils.errors import PiDConfigError

    dm = ShardDataModule(str(tmp_path / "shards"), crop_size=CROP, num_workers=0)
    with pytest.raises(PiDConfigError, match="make data"):
        dm.prepare_data()
    assert not (tmp_path / "shards").exists()


def test_sample_set_images_feed_crops(tmp_path):
    build_sample_set(tmp_path, sources=("skimage",), max_images=2, val_fraction=0.5, verbose=False)
    ds = ImageCropDataset(tmp_path / "train", 512)
    assert all(min(r.width, r.height) >= 512 for r in ds.records)


def _half_blank_image(folder, name="page.png"):
    """Left half white (a page margin), right half a real photo."""
    folder.mkdir(parents=True, exist_ok=True)
    img = np.full((256, 256, 3), 255, np.uint8)
    img[:, 128:] = photo("astronaut", (128, 256))
    Image.fromarray(img).save(folder / name)
    return folder


def test_texture_selection_holds_out_content_not_margins(tmp_path):
    from pid.data.image_folder import FixedCropDataset

    folder = _half_blank_image(tmp_path / "val")
    grid = FixedCropDataset(folder, 64, crops_per_image=4, select="grid")
    textured = FixedCropDataset(folder, 64, crops_per_image=4, select="texture")
    assert len(textured) == 4
    xs = [int(textured[i]["key"].split(",")[-1]) for i in range(len(textured))]
    assert all(x >= 64 for x in xs), xs  # at least half of every held-out crop shows content
    assert min(float(textured[i]["image"].float().std()) for i in range(4)) > \
        min(float(grid[i]["image"].float().std()) for i in range(4))
    assert [textured[i]["key"] for i in range(4)] == [textured[i]["key"] for i in range(4)]


def test_min_std_redraws_blank_training_crops(tmp_path):
    import torch

    from pid.data.image_folder import ImageCropDataset

    folder = _half_blank_image(tmp_path / "train")
    torch.manual_seed(0)
    plain = ImageCropDataset(folder, 64, hflip=False, repeats=40)
    picky = ImageCropDataset(folder, 64, hflip=False, repeats=40, min_std=10.0)
    blank = lambda ds: sum(float(ds[i]["image"].float().std()) < 10.0 for i in range(len(ds)))  # noqa: E731
    assert blank(picky) < blank(plain)
