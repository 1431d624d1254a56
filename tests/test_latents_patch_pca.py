"""PatchPCALatent: geometry, normalisation, reconstruction quality, files, frozen contract."""

import numpy as np
import pytest
import skimage.data as skd
import torch

from pid.latents import LatentSpace, PatchPCALatent
from pid.utils.errors import MissingWeightsError

NAMES = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")


def _as_float(a: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 → (3, H', W') in [-1, 1], cropped to multiples of 8."""
    t = torch.from_numpy(a).permute(2, 0, 1).float() / 127.5 - 1.0
    return t[:, : t.shape[1] // 8 * 8, : t.shape[2] // 8 * 8]


@pytest.fixture(scope="module")
def images() -> list[torch.Tensor]:
    return [_as_float(getattr(skd, n)()) for n in NAMES]


@pytest.fixture(scope="module")
def latent(images) -> PatchPCALatent:
    # every patch of every image, so the normalisation statistics are exact on these images
    return PatchPCALatent().fit(images, max_patches=10**9, patches_per_image=10**9)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(4.0 / (a.double() - b.double()).square().mean()))


def test_geometry_matches_sd3_flux_vae(latent):
    assert isinstance(latent, LatentSpace)
    assert (latent.channels, latent.down_factor, latent.noise_form) == (16, 8, "flow")
    x = torch.rand(2, 3, 64, 48) * 2 - 1
    z = latent.encode(x)
    assert z.shape == (2, 16, 8, 6) == (2, *latent.latent_shape(64, 48))
    assert latent.decode(z).shape == x.shape
    with pytest.raises(ValueError):
        latent.latent_shape(60, 48)
    with pytest.raises(ValueError):
        latent.decode(torch.zeros(1, 4, 8, 8))


def test_normalised_latent_has_zero_mean_unit_variance(latent, images):
    z = torch.cat([latent.encode(x[None]).flatten(2) for x in images], dim=2)[0]  # (16, N)
    assert z.mean(1).abs().max() < 1e-2
    assert (z.std(1) - 1).abs().max() < 1e-2
    raw = latent.encode_raw(images[0][None])
    torch.testing.assert_close(latent.denormalize(latent.normalize(raw)), raw, atol=1e-4, rtol=1e-5)


def test_reconstruction_beats_random_components(latent, images):
    rng = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(192, 16, generator=rng, dtype=torch.float64))
    rand = PatchPCALatent()
    rand.load_state_dict(latent.state_dict())
    rand.basis.copy_(q.T.reshape(16, 3, 8, 8).float())
    for x in images:
        pca_db = _psnr(latent.decode(latent.encode(x[None])), x[None])
        rand_db = _psnr(rand.decode(rand.encode(x[None])), x[None])
        assert pca_db > 25.0
        assert pca_db > rand_db + 5.0
    assert latent.explained_variance() > 0.9


def test_fit_is_deterministic_and_accepts_uint8_arrays(images):
    arrays = [getattr(skd, n)() for n in NAMES[:3]]
    a = PatchPCALatent().fit(arrays, patches_per_image=2048, seed=3)
    b = PatchPCALatent().fit(arrays, patches_per_image=2048, seed=3)
    assert torch.equal(a.basis, b.basis) and torch.equal(a.scale, b.scale)
    c = PatchPCALatent().fit([_as_float(x) for x in arrays], patches_per_image=2048, seed=3)
    torch.testing.assert_close(a.basis, c.basis, atol=1e-4, rtol=0)


def test_save_load_roundtrip(latent, images, tmp_path):
    path = latent.save(tmp_path / "pca.safetensors")
    assert path.stat().st_size < 50_000
    loaded = PatchPCALatent.from_file(path)
    assert loaded.n_patches == latent.n_patches
    x = images[1][None]
    assert torch.equal(loaded.encode(x), latent.encode(x))
    assert torch.equal(loaded.decode(latent.encode(x)), latent.decode(latent.encode(x)))


def test_missing_file_names_config_key_and_fix(tmp_path):
    with pytest.raises(MissingWeightsError) as err:
        PatchPCALatent.from_file(tmp_path / "absent.safetensors")
    assert err.value.config_key == "latent.path"
    assert "latent.path" in str(err.value) and "fit" in str(err.value)


def test_unfitted_latent_refuses_to_encode():
    with pytest.raises(RuntimeError, match="not fitted"):
        PatchPCALatent().encode(torch.zeros(1, 3, 16, 16))


def test_frozen_by_design(latent):
    latent.train()
    assert not latent.training
    assert all(not p.requires_grad for p in latent.parameters())
    x = torch.zeros(1, 3, 16, 16, requires_grad=True)
    assert not latent.encode(x).requires_grad


def test_cli_fits_folder_of_images(tmp_path, capsys):
    from PIL import Image

    from pid.latents.patch_pca import main

    for name in NAMES[:2]:
        Image.fromarray(getattr(skd, name)()).save(tmp_path / f"{name}.png")
    main([str(tmp_path / "pca.safetensors"), "--images", str(tmp_path), "--downscale", "4"])
    assert '"channels": 16' in capsys.readouterr().out
    assert PatchPCALatent.from_file(tmp_path / "pca.safetensors").fitted


def test_prepare_hook_fits_the_embedded_latent_once_and_other_spaces_pass(tiny_image_root, tmp_path):
    """`pid.train` calls ``latent.prepare(datamodule, cfg)`` on every space: a space built from its weights
    has nothing to do, the embedded latent fits itself on the ↓sr_scale training images and saves the fit."""
    from types import SimpleNamespace

    from hydra.utils import instantiate

    from conftest import compose_train
    from pid.latents.rgb import RGBLatent

    prepared = []
    datamodule = SimpleNamespace(root=tiny_image_root, prepare_data=lambda: prepared.append(True))
    cfg = compose_train(["experiment=quickstart", f"paths.output_dir={tmp_path}",
                         f"latent.path={tmp_path}/pca.safetensors"])
    rgb = RGBLatent()
    assert rgb.prepare(datamodule, cfg) is rgb and not prepared

    latent = instantiate(cfg.latent)
    assert isinstance(latent, PatchPCALatent) and not latent.fitted  # building never fits
    assert latent.prepare(datamodule, cfg) is latent and latent.fitted and prepared
    assert (tmp_path / "pca.safetensors").is_file()
    again = instantiate(cfg.latent)  # read from its file: prepare has nothing left to do
    assert again.fitted and again.prepare(None, cfg) is again
    torch.testing.assert_close(again.basis, latent.basis)


def test_embedded_latent_without_its_file_builds_and_fails_only_when_used(tmp_path):
    """fit_if_missing false: building still works (a checkpoint that carries the latent fills it), preparing
    for training or encoding names latent.path."""
    from pid.latents.patch_pca import embedded_latent

    latent = embedded_latent(str(tmp_path / "absent.safetensors"), 16, 8, fit_if_missing=False)
    assert not latent.fitted and latent.store_in_checkpoint
    with pytest.raises(MissingWeightsError, match="latent.path"):
        latent.prepare(None, None)
    with pytest.raises(MissingWeightsError, match="latent.path"):
        latent.encode(torch.zeros(1, 3, 16, 16))
    fitted = PatchPCALatent().fit([torch.rand(3, 64, 64) * 2 - 1 for _ in range(4)])
    latent.load_state_dict(fitted.state_dict(), strict=True)  # what a loader does with the file's tensors
    assert latent.fitted
    x = torch.zeros(1, 3, 16, 16)
    torch.testing.assert_close(latent.encode(x), fitted.encode(x))


def test_the_former_factory_name_still_builds_the_embedded_latent(tmp_path):
    """Run configs inside earlier exports name pid.latents.prepare.embedded_latent."""
    from hydra.utils import instantiate

    cfg = {"_target_": "pid.latents.prepare.embedded_latent", "channels": 16, "down_factor": 8,
           "path": str(tmp_path / "absent.safetensors"), "fit_if_missing": True}
    assert isinstance(instantiate(cfg), PatchPCALatent)


def test_each_geometry_has_its_own_embedded_latent_file(images, tmp_path):
    """latent.path names channels and down factor: changing either fits a new file instead of meeting
    the old one (whose geometry would be refused)."""
    from conftest import compose_train
    from pid.latents.patch_pca import embedded_latent

    paths = {}
    for channels, down in ((16, 8), (8, 4)):
        cfg = compose_train(["experiment=quickstart", f"latent.channels={channels}",
                             f"latent.down_factor={down}", f"paths.data_dir={tmp_path}"])
        paths[(channels, down)] = cfg.latent.path
        assert cfg.latent.path == f"{tmp_path}/latents/patch_pca_{channels}x{down}_sr4.safetensors"
    PatchPCALatent(channels=16, patch=8).fit(images).save(paths[(16, 8)])
    other = embedded_latent(paths[(8, 4)], 8, 4, fit_if_missing=True)
    assert (other.channels, other.down_factor) == (8, 4)
    with pytest.raises(ValueError, match="holds a 16-channel 8× latent"):
        embedded_latent(paths[(16, 8)], 8, 4, fit_if_missing=True)


def test_latent_fit_passes_over_files_that_cannot_be_decoded(tmp_path, caplog):
    """The fit reads the training folder as the loader does: a text file named .png and a JPEG cut off
    halfway are named in a warning and left out; the fit uses the real images."""
    import io
    import logging

    from PIL import Image

    from pid.latents.patch_pca import lq_training_images

    for name in ("astronaut", "coffee"):
        Image.fromarray(getattr(skd, name)()).save(tmp_path / f"{name}.png")
    (tmp_path / "fake.png").write_text("not an image")
    buf = io.BytesIO()
    Image.fromarray(skd.chelsea()).save(buf, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with caplog.at_level(logging.WARNING, logger="pid.latents.patch_pca"):
        images = list(lq_training_images(tmp_path, 4))
    assert len(images) == 2 and all(img.shape[0] == 3 for img in images)
    passed_over = " ".join(r.getMessage() for r in caplog.records)
    assert "fake.png" in passed_over and "cut.jpg" in passed_over
    assert PatchPCALatent(channels=16, patch=8).fit(images).fitted


def test_latent_path_that_is_a_folder_or_not_safetensors_is_refused_clearly(tmp_path):
    from pid.latents.patch_pca import embedded_latent
    from pid.utils.errors import PiDConfigError

    with pytest.raises(PiDConfigError, match="is a folder: give the .safetensors file"):
        embedded_latent(str(tmp_path), 16, 8, fit_if_missing=True)
    assert [p.name for p in tmp_path.iterdir()] == [], "nothing is written beside it"
    text = tmp_path / "README.md"
    text.write_text("# not a latent\n" * 50)
    with pytest.raises(PiDConfigError, match="cannot be read as a .safetensors file"):
        embedded_latent(str(text), 16, 8, fit_if_missing=True)
