"""VAE latent spaces (FLUX.1, SD3, SDXL, FLUX.2, Qwen-Image) with the real diffusers classes at a tiny random
size; a VAE folder of another model is refused with both models' values named."""

from __future__ import annotations

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from conftest import compose_train
from pid.latents.vae import DiffusersVAELatent, tiny_vae_config
from pid.utils.errors import MissingWeightsError, PiDConfigError

# latent config → (diffusers class, raw VAE channels, channels/down as PiD sees them, the release's
# config.json normalisation: FLUX.1 / SD3 / SDXL scaling/shift factors; FLUX.2 keeps batch-norm statistics
# in its weights; Qwen-Image's latents_mean/latents_std lists are diffusers' AutoencoderKLQwenImage defaults)
VAES = {
    "flux1": ("AutoencoderKL", 16, 16, 8, {"scaling_factor": 0.3611, "shift_factor": 0.1159}),
    "sd3": ("AutoencoderKL", 16, 16, 8, {"scaling_factor": 1.5305, "shift_factor": 0.0609}),
    "sdxl": ("AutoencoderKL", 4, 4, 8, {"scaling_factor": 0.13025}),
    "flux2": ("AutoencoderKLFlux2", 32, 128, 16, {}),
    "qwenimage": ("AutoencoderKLQwenImage", 16, 16, 8, {}),
}
QWEN_MEAN = [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
             0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]
QWEN_STD = [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
            3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160]


def tiny_vae(vae_class: str, raw_channels: int, seed: int = 0, **config):
    import diffusers

    torch.manual_seed(seed)
    vae = getattr(diffusers, vae_class)(**tiny_vae_config(vae_class, raw_channels, **config)).eval()
    if vae_class == "AutoencoderKLFlux2":  # non-trivial batch-norm statistics, as a real checkpoint has
        vae.bn.running_mean.normal_()
        vae.bn.running_var.uniform_(0.5, 2.0)
    return vae


def tiny_release_vae(name: str, seed: int = 0):
    """A tiny random VAE of the class and with the config constants of ``latent=name``'s release."""
    vae_class, raw, _, _, constants = VAES[name]
    return tiny_vae(vae_class, raw, seed, **constants)


def latent_from_config(name: str, **overrides):
    cfg = compose_train([f"latent={name}", "paths.output_dir=/tmp/out"])
    return instantiate(cfg.latent, vae=tiny_release_vae(name), dtype="float32", **overrides)


def load_from_folder(name: str, folder, *overrides: str):
    """``latent=name`` with ``latent.path=folder`` through Hydra; the class's own error, unwrapped."""
    cfg = compose_train([f"latent={name}", f"latent.path={folder}", "latent.dtype=float32",
                         "paths.output_dir=/tmp/out", *overrides])
    try:
        return instantiate(cfg.latent)
    except InstantiationException as err:  # Hydra wraps the error raised by the class
        raise err.__cause__ from None


@pytest.mark.parametrize("name", sorted(VAES))
def test_encode_shape_and_normalisation_round_trip(name):
    latent = latent_from_config(name)
    _, _, channels, down, _ = VAES[name]
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
    vae = tiny_release_vae("flux1")
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


def test_vae_folder_of_another_model_is_refused_naming_both(tmp_path):
    """Issue 15 item 10: latent=flux1 with an SD3 VAE folder (same 16 ch / 8× geometry, other scale/shift);
    and latent=sdxl with an SD1.5 VAE folder (4 ch / 8×, scaling_factor 0.18215 instead of 0.13025)."""
    tiny_release_vae("sd3").save_pretrained(tmp_path / "sd3_vae")
    with pytest.raises(PiDConfigError) as err:
        load_from_folder("flux1", tmp_path / "sd3_vae")
    msg = str(err.value)
    assert "sd3_vae" in msg and "latent=flux1" in msg
    assert "scaling_factor=1.5305" in msg and "shift_factor=0.0609" in msg
    assert "latent.scale=0.3611" in msg and "latent.shift=0.1159" in msg

    tiny_vae("AutoencoderKL", 4, scaling_factor=0.18215).save_pretrained(tmp_path / "sd15_vae")
    with pytest.raises(PiDConfigError, match=r"scaling_factor=0\.18215.*latent\.scale=0\.13025"):
        load_from_folder("sdxl", tmp_path / "sd15_vae")

    # the matching folders load, with the folder's constants in use
    tiny_release_vae("sdxl").save_pretrained(tmp_path / "sdxl_vae")
    latent = load_from_folder("sdxl", tmp_path / "sdxl_vae")
    assert float(latent.scale) == pytest.approx(0.13025) and float(latent.shift) == 0.0
    latent = load_from_folder("sd3", tmp_path / "sd3_vae")
    assert float(latent.scale) == pytest.approx(1.5305) and float(latent.shift) == pytest.approx(0.0609)

    # another class with the same geometry (a Qwen-Image VAE for latent=flux1); a built model given directly
    tiny_release_vae("qwenimage").save_pretrained(tmp_path / "qwen_vae")
    with pytest.raises(PiDConfigError, match=r"holds a AutoencoderKLQwenImage.*vae_class=AutoencoderKL"):
        load_from_folder("flux1", tmp_path / "qwen_vae")
    cfg = compose_train(["latent=flux1", "paths.output_dir=/tmp/out"])
    with pytest.raises(InstantiationException) as err:
        instantiate(cfg.latent, vae=tiny_release_vae("sd3"), dtype="float32")
    cause = err.value.__cause__
    assert isinstance(cause, PiDConfigError) and "scaling_factor=1.5305" in str(cause)


def test_qwenimage_encodes_single_frames_with_per_channel_mean_and_std(tmp_path):
    vae = tiny_release_vae("qwenimage")
    assert list(vae.config.latents_mean) == QWEN_MEAN and list(vae.config.latents_std) == QWEN_STD
    vae.save_pretrained(tmp_path / "vae")
    latent = load_from_folder("qwenimage", tmp_path / "vae")
    assert (latent.channels, latent.down_factor, latent.noise_form) == (16, 8, "flow")
    assert latent.name == "qwenimage"
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    z = latent.encode(x)
    assert z.shape == (2, 16, 4, 6)
    # by hand: the frame VAE's posterior mean of the one-frame video, then (z − mean_c) / std_c per channel
    raw = vae.encode(x[:, :, None]).latent_dist.mean
    assert raw.shape == (2, 16, 1, 4, 6)
    mean = torch.tensor(QWEN_MEAN).view(1, 16, 1, 1)
    std = torch.tensor(QWEN_STD).view(1, 16, 1, 1)
    torch.testing.assert_close(z, (raw[:, :, 0] - mean) / std, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(latent.denormalize(z), raw[:, :, 0], atol=1e-5, rtol=1e-5)
    out = latent.decode(z)
    assert out.shape == (2, 3, 32, 48) and torch.isfinite(out).all()
    torch.testing.assert_close(out, vae.decode(raw).sample[:, :, 0].clamp(-1, 1), atol=1e-5, rtol=1e-5)

    latent.set_tiling(32)  # the Wan-family tiler: 64×64 image = overlapping 32-pixel tiles
    tiled = latent.decode(latent.encode(torch.rand(1, 3, 64, 64) * 2 - 1))
    assert tiled.shape == (1, 3, 64, 64) and torch.isfinite(tiled).all()


def test_qwenimage_folder_with_other_statistics_or_geometry_is_refused(tmp_path):
    other_std = list(QWEN_STD)
    other_std[3] = 1.0  # a VAE of the same family trained/normalised differently
    tiny_vae("AutoencoderKLQwenImage", 16, latents_std=other_std).save_pretrained(tmp_path / "other")
    with pytest.raises(PiDConfigError) as err:
        load_from_folder("qwenimage", tmp_path / "other")
    msg = str(err.value)
    assert "latents_std=[2.8184, 1.4541, 2.3275, 1, …] (16 values)" in msg
    assert "latent.latents_std=[2.8184, 1.4541, 2.3275, 2.6558, …]" in msg and "latents_mean" not in msg
    # with the check switched off (null lists) the folder's own statistics are used
    latent = load_from_folder("qwenimage", tmp_path / "other", "latent.latents_mean=null",
                              "latent.latents_std=null")
    torch.testing.assert_close(latent.scale, 1 / torch.tensor(other_std))

    tiny_vae("AutoencoderKLQwenImage", 48, latents_mean=[0.0] * 48, latents_std=[1.0] * 48).save_pretrained(
        tmp_path / "wide")  # a 48-channel member of the family (Wan 2.2's width)
    with pytest.raises(PiDConfigError, match=r"48 channels at 8× down.*latent.channels=16"):
        load_from_folder("qwenimage", tmp_path / "wide")


def test_qwenimage_wires_like_the_other_16_channel_latents():
    from pid.preflight import check_latent_geometry

    cfg = compose_train(["experiment=quickstart", "latent=qwenimage", "data.crop_size=256",
                         "paths.output_dir=/tmp/out"])
    check_latent_geometry(cfg)
    assert (cfg.model.net.latent_channels, cfg.model.net.latent_down) == (16, 8)
