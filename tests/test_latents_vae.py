"""VAE latent spaces (FLUX.1, SD3, SDXL, FLUX.2) with the real diffusers classes at a tiny random size."""

from __future__ import annotations

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from conftest import compose_train
from pid.latents.vae import DiffusersVAELatent, tiny_vae_config
from pid.utils.errors import MissingWeightsError, PiDConfigError

# latent config → (diffusers class, raw VAE channels, channels/down as PiD sees them)
VAES = {
    "flux1": ("AutoencoderKL", 16, 16, 8),
    "sd3": ("AutoencoderKL", 16, 16, 8),
    "sdxl": ("AutoencoderKL", 4, 4, 8),
    "flux2": ("AutoencoderKLFlux2", 32, 128, 16),
}


def tiny_vae(vae_class: str, raw_channels: int, seed: int = 0):
    import diffusers

    torch.manual_seed(seed)
    vae = getattr(diffusers, vae_class)(**tiny_vae_config(vae_class, raw_channels)).eval()
    if vae_class == "AutoencoderKLFlux2":  # non-trivial batch-norm statistics, as a real checkpoint has
        vae.bn.running_mean.normal_()
        vae.bn.running_var.uniform_(0.5, 2.0)
    return vae


def latent_from_config(name: str, **overrides):
    cfg = compose_train([f"latent={name}", "paths.output_dir=/tmp/out"])
    vae_class, raw, _, _ = VAES[name]
    return instantiate(cfg.latent, vae=tiny_vae(vae_class, raw), dtype="float32", **overrides)


@pytest.mark.parametrize("name", sorted(VAES))
def test_encode_shape_and_normalisation_round_trip(name):
    latent = latent_from_config(name)
    _, _, channels, down = VAES[name]
    assert (latent.channels, latent.down_factor) == (channels, down)
    assert latent.noise_form == ("vp" if name == "sdxl" else "flow")
    crop = 128  # HQ crop 128×256; the encoder sees the ↓sr_scale image
    for sr_scale in (4, 8):
        lq = torch.rand(2, 3, crop // sr_scale, 2 * crop // sr_scale) * 2 - 1
        z = latent.encode(lq)
        assert z.shape == (2, channels, lq.shape[-2] // down, lq.shape[-1] // down)
    raw = latent.encode_raw(lq)
    torch.testing.assert_close(latent.denormalize(latent.normalize(raw)), raw, atol=1e-5, rtol=1e-5)
    assert latent.decode(z).shape == lq.shape


def test_published_constants():
    for name, (shift, scale) in {
        "flux1": (0.1159, 0.3611),
        "sd3": (0.0609, 1.5305),
        "sdxl": (0.0, 0.13025),
    }.items():
        latent = latent_from_config(name)
        assert float(latent.shift) == pytest.approx(shift) and float(latent.scale) == pytest.approx(scale)
        raw = torch.randn(1, latent.channels, 2, 2)
        torch.testing.assert_close(latent.normalize(raw), (raw - shift) * scale)


def test_flux2_packs_like_the_pipeline_and_uses_batchnorm_stats():
    latent = latent_from_config("flux2")
    vae = latent.vae
    x = torch.rand(1, 3, 64, 32) * 2 - 1
    mean = vae.encode(x).latent_dist.mean  # (1, 32, 8, 4)
    # diffusers Flux2Pipeline._patchify_latents + batch-norm normalisation, written out
    b, c, h, w = mean.shape
    packed = mean.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)
    expected = (packed - vae.bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(
        vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps
    )
    torch.testing.assert_close(latent.encode(x), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(latent.unpack(latent.pack(mean)), mean)


def test_load_from_local_folder_in_bf16_and_tiled_decode(tmp_path):
    vae = tiny_vae("AutoencoderKL", 16)
    vae.save_pretrained(tmp_path / "vae")
    cfg = compose_train(
        [
            "latent=flux1",
            f"latent.path={tmp_path}/vae",
            "latent.tiled_decode=true",
            "latent.tile_size=32",
            "paths.output_dir=/tmp/out",
        ]
    )
    latent = instantiate(cfg.latent)
    assert next(latent.vae.parameters()).dtype == torch.bfloat16
    assert latent.encode(torch.rand(1, 3, 16, 16) * 2 - 1).dtype == torch.float32  # fp32 latents
    latent.vae.float()  # (bf16 convolutions are slow on CPU)
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    z = latent.encode(x)  # encoding is never tiled: the exact latent
    assert z.shape == (1, 16, 8, 8)
    assert latent.vae.use_tiling and latent.vae.tile_latent_min_size == 4  # 8×8 latent: overlapping 4×4 tiles
    out = latent.decode(z)
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all()
    with pytest.raises(PiDConfigError, match="tile_size=20"):
        latent.set_tiling(20)


def test_geometry_mismatch_is_reported():
    with pytest.raises(ValueError, match="latent.channels=16"):
        DiffusersVAELatent(vae=tiny_vae("AutoencoderKL", 4), channels=16, down_factor=8, dtype="float32")


@pytest.mark.parametrize("name", sorted(VAES))
def test_missing_weights_name_the_key_and_files(name, tmp_path):
    cfg = compose_train([f"latent={name}", "paths.output_dir=/tmp/out"])
    for path in (None, str(tmp_path / "does-not-exist")):
        with pytest.raises(InstantiationException) as err:  # Hydra wraps the error raised by the class
            instantiate(cfg.latent, path=path)
        cause = err.value.__cause__
        assert isinstance(cause, MissingWeightsError) and cause.config_key == "latent.path"
        assert "latent.path" in str(cause) and "config.json" in str(cause)
        assert path is None or "does-not-exist" in str(cause)


def test_flux2_single_file_with_a_local_config(tmp_path):
    from safetensors.torch import save_file

    vae = tiny_vae("AutoencoderKLFlux2", 32)
    vae.save_config(tmp_path / "config")
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(tmp_path / "ae.safetensors"))
    cfg = compose_train(
        [
            "latent=flux2",
            f"latent.path={tmp_path}/ae.safetensors",
            "latent.dtype=float32",
            f"latent.single_file_config={tmp_path}/config",
            "paths.output_dir=/tmp/out",
        ]
    )
    latent = instantiate(cfg.latent)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(latent.shift, vae.bn.running_mean)
    reference = DiffusersVAELatent(
        vae=vae,
        channels=128,
        down_factor=16,
        vae_class="AutoencoderKLFlux2",
        packing=2,
        bn_stats=True,
        dtype="float32",
    )
    torch.testing.assert_close(latent.encode(x), reference.encode(x))
