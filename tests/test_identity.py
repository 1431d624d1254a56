"""Model identity: every export and checkpoint carries a fingerprint of what it decodes, and every pairing
(DMD2 teacher and latent, evaluation's teacher and student, a decoder and the latent it is given) compares
fingerprints, not shapes. Tiny real parts: the quickstart network, the PCA latent fitted on photos, a
random diffusers AutoencoderKL saved as a folder (the README's add-a-latent recipe)."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
from pathlib import Path

import pytest
import torch

from conftest import compose_train

NET = ["model.net.hidden_size=64", "model.net.patch_depth=2", "model.net.pixel_attn_hidden_size=32",
       "model.net.txt_embed_dim=32", "model.net.adapter.width=32"]


def base_overrides(root: Path, out: Path) -> list[str]:
    return ["data=sample_images", f"data.root={root}", "data.crop_size=32", "data.batch_size=2",
            "data.num_workers=0", "data.train_repeats=2", "data.val_crops_per_image=1",
            f"paths.log_dir={out}/logs", "logger=csv", "~callbacks.progress", *NET]


def my_vae_overrides(vae_dir: Path) -> list[str]:
    """`latent=my_vae` of the README recipe, spelt as overrides of a diffusers-VAE latent group."""
    return ["latent=flux1", "latent.name=my_vae", f"latent.path={vae_dir}", "latent.channels=4",
            "latent.shift=0.0", "latent.scale=1.0", "latent.dtype=float32"]


def save_tiny_vae(folder: Path, seed: int) -> Path:
    import diffusers

    from pid.latents.vae import tiny_vae_config

    torch.manual_seed(seed)
    diffusers.AutoencoderKL(**tiny_vae_config("AutoencoderKL", 4, scaling_factor=1.0, shift_factor=0.0)
                            ).save_pretrained(folder)
    return folder


def train_export(root: Path, out: Path, run: str, *latent: str) -> Path:
    """A tiny teacher run's export (random network, the run's latent prepared as pid.train does)."""
    from pid.api import export_decoder
    from pid.train import build

    cfg = compose_train(["experiment=quickstart", *base_overrides(root, out), *latent,
                         f"paths.output_dir={out}/runs/{run}", "model.sampling.num_steps=2"])
    _, module, _ = build(cfg)
    return export_decoder(module, out / "runs" / run / "pid_decoder.safetensors")


def dmd2_cfg(root: Path, out: Path, teacher: str, *extra: str):
    return compose_train(["experiment=quickstart_dmd2", *base_overrides(root, out),
                          f"paths.output_dir={out}/dmd2", f"model.teacher_ckpt={teacher}",
                          "callbacks.image_grid.every_n_steps=0", "compare=false", *extra])


@pytest.fixture(scope="module")
def runs(tiny_image_root, tmp_path_factory):
    """logs/quickstart/runs: an older PCA teacher, then a newer `latent=my_vae` teacher."""
    out = tmp_path_factory.mktemp("identity")
    vae_dir = save_tiny_vae(out / "my_vae", seed=0)
    pca = train_export(tiny_image_root, out, "a_pca", f"latent.path={out}/pca.safetensors")
    vae = train_export(tiny_image_root, out, "b_my_vae", *my_vae_overrides(vae_dir))
    os.utime(pca, (1_000_000, 1_000_000))  # the PCA run is the older one
    return tiny_image_root, out, pca, vae, vae_dir


def test_exports_carry_a_fingerprint_that_tells_latents_apart(runs):
    from pid.identity import differences, read_identity

    _, out, pca, vae, _ = runs
    a, b = read_identity(pca), read_identity(vae)
    assert not a.derived and not b.derived  # read from the fingerprint, not derived
    assert (a.latent.kind, a.latent.channels, a.latent.down_factor) == ("PatchPCALatent", 16, 8)
    assert (b.latent.kind, b.latent.name, b.latent.channels) == ("DiffusersVAELatent", "my_vae", 4)
    assert a.latent.carried and not b.latent.carried
    assert len(a.latent.digest) == 12 and a.latent.digest != b.latent.digest
    assert a.prediction == b.prediction == "edm (sigma_data 0.5)" and a.sr_scale == 4
    assert a.text.describe() == "none"
    assert differences(a, a) == []
    assert any(d.startswith("latent class") for d in differences(a, b))


def test_a_refitted_pca_latent_is_another_latent_and_precision_is_not(runs):
    from pid.identity import latent_identity
    from pid.latents.patch_pca import PatchPCALatent, fit_from_folder

    root, out, *_ = runs
    fitted = PatchPCALatent.from_file(out / "pca.safetensors")
    same = latent_identity(fitted)
    assert latent_identity(PatchPCALatent.from_file(out / "pca.safetensors")).digest == same.digest
    refit = fit_from_folder(root / "train", 16, 8, downscale=2)  # other image sizes: another basis
    assert latent_identity(refit).digest != same.digest
    rounded = PatchPCALatent.from_file(out / "pca.safetensors")
    for name in ("basis", "mean", "scale"):  # the same weights held at bfloat16 precision
        getattr(rounded, name).copy_(getattr(rounded, name).to(torch.bfloat16).float())
    assert latent_identity(rounded).digest == same.digest


def test_files_written_before_fingerprints_get_a_derived_identity(runs, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from pid.identity import differences, read_identity

    _, _, pca, vae, _ = runs
    for src, carried in ((pca, True), (vae, False)):
        with safe_open(str(src), framework="pt") as f:
            meta = {k: v for k, v in f.metadata().items() if k != "identity"}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        old = tmp_path / f"old_{src.parent.name}.safetensors"
        save_file(tensors, str(old), metadata=meta)
        derived, fingerprint = read_identity(old), read_identity(src)
        assert "written before fingerprints" in derived.derived
        assert differences(fingerprint, derived) == []
        # the embedded latent is hashed from the tensors the file carries; a VAE's weights are not in it
        want = fingerprint.latent.digest if carried else None
        assert derived.latent.digest == want


def test_dmd2_glob_takes_the_newest_compatible_teacher_and_says_what_it_passed_over(runs, caplog):
    from pid.identity import latent_identity, read_identity
    from pid.train import build

    root, out, pca, vae, _ = runs
    with caplog.at_level(logging.INFO, logger="pid"):
        _, module, _ = build(dmd2_cfg(root, out, f"{out}/runs/*/pid_decoder.safetensors"))
    assert module.teacher_path == pca
    chosen = [r.getMessage() for r in caplog.records if "newest compatible one" in r.getMessage()]
    assert chosen and "1 newer export(s) of another model" in chosen[0] and str(vae) in chosen[0]
    assert "latent class DiffusersVAELatent vs PatchPCALatent" in chosen[0]
    assert latent_identity(module.latent).digest == read_identity(pca).latent.digest


def test_dmd2_refuses_a_teacher_of_another_latent_and_its_advice_gives_a_matching_run(runs):
    from pid.identity import IdentityMismatch, identity_of_module, read_identity
    from pid.train import build

    root, out, pca, vae, vae_dir = runs
    for teacher in (str(vae), f"{out}/runs/b_*/pid_decoder.safetensors"):  # a file, a glob of it alone
        with pytest.raises(Exception) as err:  # Hydra's instantiate wraps it; pid.train reports the cause
            build(dmd2_cfg(root, out, teacher))
        assert isinstance(err.value.__cause__, IdentityMismatch)
        text = str(err.value.__cause__)
        assert "DiffusersVAELatent 'my_vae' (4 ch" in text and "PatchPCALatent 'patch_pca16x8' (16 ch" in text
        assert "latent.channels=4 latent.down_factor=8`" not in text  # no geometry override on the PCA latent
    advice = shlex.split(re.search(r"trained with: `([^`]*)`", text).group(1))
    assert advice[0].startswith("latent=")  # a diffusers-VAE group, its settings made the teacher's
    assert f"latent.path={vae_dir}" in advice and "latent.name=my_vae" in advice
    _, module, _ = build(dmd2_cfg(root, out, str(vae), *advice))
    run, teacher = identity_of_module(module), read_identity(vae)
    assert run.latent == teacher.latent and run.latent.digest == teacher.latent.digest


def test_dmd2_refuses_a_teacher_of_another_parameterisation(runs):
    from pid.identity import IdentityMismatch
    from pid.train import build

    root, out, pca, *_ = runs
    with pytest.raises(Exception) as err:
        build(dmd2_cfg(root, out, str(pca), "model.net.prediction=v"))
    assert isinstance(err.value.__cause__, IdentityMismatch)
    assert "prediction edm (sigma_data 0.5) vs v" in str(err.value.__cause__)
    assert "model.net.prediction=edm model.net.sigma_data=0.5" in str(err.value.__cause__)


def test_a_decoder_refuses_a_latent_it_was_not_trained_on(runs, tmp_path):
    from pid.api import load_decoder
    from pid.identity import IdentityMismatch
    from pid.latents.patch_pca import fit_from_folder
    from pid.latents.vae import DiffusersVAELatent

    root, out, pca, vae, vae_dir = runs
    refit = fit_from_folder(root / "train", 16, 8, downscale=2)
    with pytest.raises(IdentityMismatch, match="latent tensors"):
        load_decoder(pca, latent=refit)
    other = DiffusersVAELatent(str(save_tiny_vae(tmp_path / "other_vae", seed=1)), channels=4, shift=0.0,
                               scale=1.0, dtype="float32", name="my_vae")
    with pytest.raises(IdentityMismatch) as err:
        load_decoder(vae, latent=other)
    assert f"latent.path={vae_dir}" in str(err.value)
    decoder = load_decoder(vae)  # its own latent, rebuilt from its run config: the same weights
    assert decoder.identity.latent.digest is not None
    with pytest.raises(IdentityMismatch, match="latent tensors"):  # pid.decode --latent-path
        load_decoder(vae, latent_path=tmp_path / "other_vae")
    from PIL import Image

    from pid.decode import main as decode_main
    from pid.utils.errors import PiDConfigError

    Image.new("RGB", (32, 32), (120, 60, 30)).save(tmp_path / "in.png")
    with pytest.raises(PiDConfigError) as err:
        decode_main(["--ckpt", str(vae), "--image", str(tmp_path / "in.png"), "--latent-path",
                     str(tmp_path / "other_vae"), "--out", str(tmp_path / "out.png")])
    assert "DiffusersVAELatent 'my_vae'" in str(err.value) and f"--latent-path {vae_dir}" in str(err.value)
    assert not (tmp_path / "out.png").exists()
    moved = save_tiny_vae(tmp_path / "moved_vae", seed=0)  # the same weights in another folder
    assert load_decoder(vae, latent_path=moved).latent.vae.config.latent_channels == 4


def test_checkpoints_carry_the_fingerprint(runs, tmp_path):
    from pid.identity import identity_of_module, read_identity
    from pid.train import build

    root, out, *_ = runs
    cfg = compose_train(["experiment=quickstart", *base_overrides(root, out),
                         f"latent.path={out}/pca.safetensors", f"paths.output_dir={tmp_path}"])
    _, module, _ = build(cfg)
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "last.ckpt")
    assert json.dumps(read_identity(tmp_path / "last.ckpt").to_dict()) == json.dumps(
        identity_of_module(module).to_dict())


@pytest.mark.parametrize("preset", ["flux_2kto4k_v1pt5", "sd3_2k", "sdxl_2kto4k", "flux2_2k",
                                    "qwenimage_2kto4k_v1pt5"])
def test_a_release_preset_accepts_its_own_vae(preset):
    """NVIDIA's files carry no fingerprint: the preset's latent config stands for it, and a VAE with the
    release's class, geometry and constants fits it (compared without tensors: class, geometry, noise
    form and normalisation)."""
    from dataclasses import replace

    from test_latents_vae import latent_from_config

    from pid.identity import differences, identity_from_release, latent_identity
    from pid.weights.release import load_release

    rel = load_release(preset)
    theirs = identity_from_release(rel)
    assert "release preset" in theirs.derived and theirs.latent.digest is None
    built = latent_identity(latent_from_config(rel.latent))
    assert built.digest is not None
    assert differences(replace(theirs, latent=built), theirs, parts=("latent",)) == []
    other = "sdxl" if rel.latent != "sdxl" else "sd3"
    assert differences(replace(theirs, latent=latent_identity(latent_from_config(other))), theirs,
                       parts=("latent",))


def test_eval_pairs_a_student_with_a_teacher_of_its_latent(runs, caplog):
    from hydra import compose, initialize_config_dir

    from conftest import CONF_DIR
    from pid.api import export_decoder
    from pid.evaluate import load_decoders
    from pid.identity import IdentityMismatch
    from pid.train import build

    root, out, pca, vae, _ = runs
    _, module, _ = build(dmd2_cfg(root, out, str(pca)))
    student = export_decoder(module, out / "students" / "pca" / "pid_decoder.safetensors")

    def cfg(ckpt: str):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose("eval", overrides=[f"ckpt={ckpt}", f"student_ckpt={student}", "eval=tiny",
                                              f"paths.log_dir={out}/logs"])

    with caplog.at_level(logging.INFO, logger="pid"):
        teacher, teacher_path, loaded, _ = load_decoders(cfg(f"{out}/runs/*/pid_decoder.safetensors"), "cpu")
    assert teacher_path == pca and loaded.identity.latent.digest == teacher.identity.latent.digest
    assert any("1 newer export(s) of another model" in r.getMessage() for r in caplog.records)
    with pytest.raises(IdentityMismatch, match="Evaluate a student distilled from this teacher") as err:
        load_decoders(cfg(str(vae)), "cpu")
    assert "PatchPCALatent 'patch_pca16x8'" in str(err.value)
    assert "DiffusersVAELatent 'my_vae'" in str(err.value)


def test_an_rae_latent_is_its_encoder_and_statistics_not_its_decoder():
    from test_latents_rae import TINY_DECODER, tiny_rae

    from pid.identity import latent_identity
    from pid.latents.rae_decoder import RAEDecoder, decoder_kwargs

    latent = tiny_rae("rae_dinov2")
    latent.set_stats(torch.zeros(32, 4, 4), torch.ones(32, 4, 4))
    before = latent_identity(latent)
    assert before.normalisation == "per-(C,H,W) mean/var statistics"
    torch.manual_seed(1)
    latent.attach_decoder(RAEDecoder(**decoder_kwargs(32, 2, 16, TINY_DECODER, None)))
    assert latent_identity(latent).digest == before.digest  # native decoding does not change the latent
    latent.set_stats(torch.zeros(32, 4, 4), torch.full((32, 4, 4), 2.0))
    assert latent_identity(latent).digest != before.digest  # other statistics: another latent


def test_a_vae_latent_is_its_encoder_and_normalisation_not_its_decoder():
    import diffusers

    from pid.identity import latent_identity
    from pid.latents.vae import DiffusersVAELatent, tiny_vae_config

    def build(shift: float = 0.0):
        torch.manual_seed(0)
        vae = diffusers.AutoencoderKL(**tiny_vae_config("AutoencoderKL", 4, scaling_factor=1.0,
                                                        shift_factor=shift))
        return DiffusersVAELatent(vae=vae, channels=4, shift=shift, scale=1.0, dtype="float32")

    before = latent_identity(build())
    latent = build()
    latent.vae.decoder.conv_out.bias.add_(1.0)  # another native decoder: the same latent
    assert latent_identity(latent).digest == before.digest
    latent.vae.encoder.conv_in.bias.add_(1.0)  # another encoder: another latent
    assert latent_identity(latent).digest != before.digest
    shifted = latent_identity(build(shift=0.5))  # another normalisation: another latent
    assert shifted.digest != before.digest and shifted.normalisation == "shift 0.5, scale 1"


def test_advice_rebuilds_the_teachers_own_settings():
    from pid.identity import run_overrides_for

    config = {"latent": {"_target_": "pid.latents.vae.DiffusersVAELatent", "name": "sdxl",
                         "path": "/w/my vae", "vae_class": "AutoencoderKL", "channels": 4, "down_factor": 8,
                         "shift": 0.0, "scale": 0.13025, "noise_form": "vp", "dtype": "float32"},
              "text": {"_target_": "pid.text.hf_encoder.HFTextEncoder", "path": "/w/gemma",
                       "max_length": 300},
              "sr_scale": 8, "model": {"net": {"prediction": "x0", "x0_t_min": 0.1}}}
    differ = ["latent class …", "text none vs …", "sr_scale 8 vs 4", "prediction x0 (t_min 0.1) vs v"]
    assert run_overrides_for(config, differ) == [
        "latent=sdxl", "latent.path='/w/my vae'", "text=gemma2", "text.path=/w/gemma", "text.max_length=300",
        "sr_scale=8", "model.net.prediction=x0", "model.net.x0_t_min=0.1"]
    config["latent"]["_target_"] = "my_module.MyLatent"  # no conf/latent file builds it
    assert run_overrides_for(config, differ[:1]) == []
