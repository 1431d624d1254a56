"""Choosing latent=… wires channels, down factor and the adapter's grid alignment for sr 2/4/8; impossible
combinations fail at config time saying why; paper experiments name every missing weight."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import compose_train
from pid.preflight import check_latent_geometry, check_required_weights
from pid.utils.errors import MissingWeightsError, PiDConfigError

# latent config → (channels, down factor as PiD sees it, adapter unpacking)
LATENTS = {
    "patch_pca": (16, 8, 1),
    "flux1": (16, 8, 1),
    "sd3": (16, 8, 1),
    "sdxl": (4, 8, 1),
    "flux2": (128, 16, 2),
    "rae_dinov2": (768, 16, 1),
    "rae_siglip2": (1152, 16, 1),
}


@pytest.mark.parametrize("name", sorted(LATENTS))
def test_latent_choice_aligns_the_adapter_for_every_sr_scale(name):
    channels, down, unpack = LATENTS[name]
    cfg = compose_train(
        ["experiment=quickstart", f"latent={name}", "data.crop_size=256", "data.buckets.multiple=128",
         "paths.output_dir=/tmp/out"]
    )
    for sr in (2, 4, 8):
        cfg.sr_scale = sr  # everything downstream is interpolated from it
        check_latent_geometry(cfg)
        net = OmegaConf.to_container(cfg.model.net, resolve=True)
        assert (net["latent_channels"], net["latent_down"], net["sr_scale"]) == (channels, down, sr)
        adapter = instantiate(cfg.model.net.adapter)(
            latent_channels=net["latent_channels"],
            hidden_size=8,
            patch_depth=2,
            patch_size=net["patch_size"],
            latent_down=net["latent_down"],
            sr_scale=sr,
        )
        assert adapter.latent_unpatchify == unpack
        p = net["patch_size"]
        lq = 256 // sr  # the encoder sees the ↓sr image; its latent lands exactly on the patch grid
        z = torch.zeros(1, channels, lq // down, lq // down)
        aligned = adapter.align(z, (256 // p, 256 // p))
        assert aligned.shape[-2:] == (256 // p, 256 // p)
        assert float(adapter.ratio) == sr * (down // unpack) / p


@pytest.mark.parametrize(
    "overrides,why",
    [
        (["latent=rae_dinov2", "sr_scale=3"], "power of two"),
        (["latent=sdxl", "sr_scale=6"], "power of two"),
        (["latent=flux2", "sr_scale=8", "data.crop_size=192"], "multiple of 128"),
        (["latent=flux1", "model.net.patch_size=24"], "patch_size=24"),
        (["data.crop_size=100"], r"not a multiple of the latent's down factor 8 \(embedded_latent\)"),
        (["latent.down_factor=16"], r"data.buckets.multiple=32: .* set data.buckets.multiple to a multiple "
                                    "of 64"),
    ],
)
def test_impossible_combinations_fail_at_config_time(overrides, why):
    cfg = compose_train(["experiment=quickstart", "paths.output_dir=/tmp/out", *overrides])
    with pytest.raises(PiDConfigError, match=why):
        check_required_weights(cfg)  # the preflight of `pid.train`: geometry first, before any weights


@pytest.mark.parametrize(
    "experiment,sr,latent_keys",
    [
        ("pid_sd3_4x", 4, ["latent.path"]),
        ("pid_sdxl_4x", 4, ["latent.path"]),
        ("pid_flux2_4x", 4, ["latent.path"]),
        ("pid_rae_dinov2_4x", 4, ["latent.path", "latent.stats_path"]),
        ("pid_rae_siglip_8x", 8, ["latent.path", "latent.stats_path"]),
    ],
)
def test_paper_experiments_wire_and_name_missing_weights(experiment, sr, latent_keys, tmp_path):
    cfg = compose_train(
        [f"experiment={experiment}", f"paths.root_dir={tmp_path}", "paths.output_dir=/tmp/out"]
    )
    assert cfg.sr_scale == sr
    check_latent_geometry(cfg)
    with pytest.raises(MissingWeightsError) as err:
        check_required_weights(cfg)
    message = str(err.value)
    for key in ("model.init_from", "text.path", *latent_keys):
        assert key in message
