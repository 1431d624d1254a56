"""Export targets: what NVIDIA's code, ComfyUI and InvokeAI can run, checked at export and convert; files
that carry their preset; the consumers' layouts read back exactly.

Golden data: ``../shared/ecosystem/`` (ComfyUI's and InvokeAI's key sets, read from their code) and
``../shared/official/`` (NVIDIA's tiny networks in the released layouts).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pytest
import torch

from pid.utils.errors import PiDConfigError
from pid.weights import read_weights
from pid.weights.targets import TARGETS, ContractError, check

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
ECO, OFFICIAL = SHARED / "ecosystem", SHARED / "official"
needs_shared = pytest.mark.skipif(not (ECO / "invokeai_contract.json").is_file()
                                  or not (OFFICIAL / "tiny" / "v1_release.pth").is_file(),
                                  reason=f"golden data not found under {SHARED}")
TINY_FILES = ("v1_release", "v1_5_student_release", "v1_5_teacher_full")


def tiny_run_export(out: Path, *overrides: str, latent: bool = False) -> Path:
    """``out/pid_decoder.safetensors`` as pid.train writes it for the quickstart config with ``overrides``
    (random weights; with ``latent``: an embedded latent fitted on a photo, carried in the file)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from conftest import compose_train
    from pid.weights.export import write_export

    cfg = compose_train(["experiment=quickstart", f"paths.output_dir={out}",
                         f"latent.path={out}/latent.safetensors", *overrides])  # not the repository's
    torch.manual_seed(0)
    net = instantiate(cfg.model.net)
    with torch.no_grad():  # random everywhere (a fresh net's zero output layer and heads would hide errors)
        for name, param in net.named_parameters():
            n = torch.randn_like(param)
            if name.endswith("log_alpha"):
                param.copy_(1.6 + 0.2 * n)
            elif param.ndim >= 2:
                param.copy_(n / param[0].numel() ** 0.5)
            else:
                param.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * n)
    config = OmegaConf.to_container(cfg, resolve=True)
    latent_state = None
    if latent:
        import skimage.data

        from pid.latents.patch_pca import PatchPCALatent

        img = torch.from_numpy(skimage.data.astronaut()[:128, :128]).permute(2, 0, 1).float() / 127.5 - 1
        latent_state = PatchPCALatent(16, 8).fit(img[None]).state_dict()
    return write_export(out / "pid_decoder.safetensors", net.state_dict(), config, int(cfg.sr_scale),
                        latent_state)


# -------------------------------------------------------------------------------- refusals and warnings
def test_the_quickstart_model_is_refused_for_nvidia_and_comfyui_naming_the_edm_output(tmp_path):
    from pid.weights.export import main

    src = tiny_run_export(tmp_path)
    for target in ("official", "comfyui"):
        start = time.perf_counter()
        with pytest.raises(SystemExit) as info:
            main([str(src), str(tmp_path / f"{target}.pth"), "--target", target])
        assert time.perf_counter() - start < 10
        message = str(info.value)
        assert f"--target {target}" in message and "model.net.prediction=edm" in message
        assert "EDM-preconditioned output" in message and "--target pid" in message
        assert "model.net.prediction=v" in message  # a way on
        assert "trained without caption states" in message  # the quickstart has no text either
        assert not (tmp_path / f"{target}.pth").exists()
    with pytest.raises(SystemExit, match="full-size network.*hidden_size is 128, ComfyUI builds 1536"):
        main([str(src), str(tmp_path / "c.safetensors"), "--target", "comfyui"])
    with pytest.raises(SystemExit, match="InvokeAI runs only PiD v1 students"):
        main([str(src), str(tmp_path / "i.safetensors"), "--target", "invokeai"])
    out = main([str(src), str(tmp_path / "pid.pth"), "--target", "pid"])
    assert out.is_file() and out.with_suffix(".yaml").is_file()


def test_a_v_prediction_captioned_model_exports_for_nvidia_with_a_warning_only(tmp_path, caplog):
    from pid.weights.export import export_model

    src = tiny_run_export(tmp_path, "model.net.prediction=v", "text=gemma2")
    with caplog.at_level(logging.WARNING):
        done = export_model(src, tmp_path / "out" / "model_ema_bf16.pth")  # official is the default
    assert not done.verdict.errors
    assert any("64-d caption states" in w for w in done.verdict.warnings)
    assert any("sampler: this is a teacher" in r.message for r in caplog.records)
    raw = torch.load(done.path, weights_only=True)
    assert all(k.startswith("net.") for k in raw) and raw["net.lq_proj.gate_modules.0.log_alpha"].ndim == 0
    assert any(k.startswith("net.lq_proj.lq_aux_rgb_head.") for k in raw)  # official teachers keep it
    with pytest.raises(ContractError, match="target='comfyui'"):  # the Python caller's words
        export_model(src, tmp_path / "c.safetensors", "comfyui", option="target=")


def test_unknown_target_and_suffix_are_refused():
    from pid.weights.export import export_model
    from pid.weights.targets import get_target

    with pytest.raises(PiDConfigError, match="--target vlc: unknown export target; choose one of official"):
        get_target("vlc")
    with pytest.raises(PiDConfigError, match="ComfyUI files are .pth or .safetensors"):
        export_model(OFFICIAL / "tiny" / "v1_release.pth", "/tmp/x.ckpt", "comfyui")


# ------------------------------------------------------------------------------ full-size key contracts
def _full_size(preset: str) -> tuple[dict, dict]:
    """(the file's tensors for every target, on the meta device; the release's preset) of a full-size net."""
    from pid.weights.export import _preset_dict
    from pid.weights.release import load_release

    rel = load_release(preset)
    with torch.device("meta"):
        net = rel.build_net()
    return net.state_dict(), _preset_dict(rel)


def _checked(state, preset, target):
    from pid.weights.export import facts_for, target_tensors

    tensors = target_tensors(state, TARGETS[target], torch.bfloat16)
    return {k.removeprefix("net."): tuple(v.shape) for k, v in tensors.items()}, check(
        target, facts_for(tensors, preset))


@needs_shared
@pytest.mark.parametrize("preset, manifest", [
    ("flux_2k", "PiD_res2k_sr4x_official_flux_distill_4step"),
    ("flux_2kto4k_v1pt5", "PiD_v1pt5_res2kto4k_sr4x_official_flux_distill_4step"),
    ("flux2_2kto4k_v1pt5", "PiD_v1pt5_res2kto4k_sr4x_official_flux2_distill_4step"),
])
def test_full_size_students_export_comfyuis_key_sets(preset, manifest):
    state, info = _full_size(preset)
    shapes, verdict = _checked(state, info, "comfyui")
    want = json.loads((ECO / f"comfyui_{manifest}.json").read_text())
    assert shapes == {k: tuple(v) for k, v in want["keys"].items()}
    assert not verdict.errors and not verdict.warnings
    official = json.loads((OFFICIAL / "keys" / f"{manifest}.json").read_text())
    off_shapes, off_verdict = _checked(state, info, "official")
    assert off_shapes == {k.removeprefix("net."): tuple(v) for k, v in official["keys"].items()}
    assert not off_verdict.errors


@needs_shared
def test_invokeai_takes_the_full_size_v1_student_exactly_and_refuses_v15_saying_why():
    contract = json.loads((ECO / "invokeai_contract.json").read_text())["contract_keys"]
    for preset, base in (("flux_2k", "Flux"), ("flux2_2k", "Flux2")):
        state, info = _full_size(preset)
        shapes, verdict = _checked(state, info, "invokeai")
        assert shapes == {k: tuple(v) for k, v in contract[base]["keys"].items()}
        assert not verdict.errors and any("de-normalised latent" in w for w in verdict.warnings)
    state, info = _full_size("flux_2kto4k_v1pt5")
    _, verdict = _checked(state, info, "invokeai")
    assert len(verdict.errors) == 1
    assert "only PiD v1 students (adapter width 512" in verdict.errors[0]
    assert "adapter width 1024 and the v1.5 PiT injection" in verdict.errors[0]


def test_comfyui_refuses_a_full_size_net_that_differs_in_what_it_does_not_read():
    """ComfyUI reads only the adapter width, channels and gate count: a v1 student with replicate padding
    loads there with every key right, and is refused naming the padding."""
    state, info = _full_size("flux_2k")
    info["net"]["adapter"]["padding_mode"] = "replicate"
    _, verdict = _checked(state, info, "comfyui")
    assert len(verdict.errors) == 1 and "model.net.adapter.padding_mode is 'replicate'" in verdict.errors[0]
    state, info = _full_size("flux_2k")  # another normalisation of the FLUX.1 latent: runs, differently
    info["latent"] = {"name": "flux1", "shift": 0.1159, "scale": 0.5}
    _, verdict = _checked(state, info, "comfyui")
    assert not verdict.errors and any("latent.scale=0.5 (NVIDIA's: 0.3611)" in w for w in verdict.warnings)
    state, info = _full_size("flux_v1pt5_teacher")  # a teacher: runs, differently
    shapes, verdict = _checked(state, info, "comfyui")
    assert not verdict.errors and not any("aux_rgb_head" in k for k in shapes)
    assert any("this is a teacher" in w and "4 re-noising steps" in w for w in verdict.warnings)


# ------------------------------------------------------------------------- files that carry their preset
def test_an_export_loads_without_release_and_decodes_from_another_folder(tmp_path, caplog, monkeypatch):
    import numpy as np
    import skimage.data
    from PIL import Image

    from pid.api import load_decoder
    from pid.decode import main as decode
    from pid.weights.export import main

    src = tiny_run_export(tmp_path / "run", latent=True)
    out = main([str(src), str(tmp_path / "out" / "model_ema_bf16.pth"), "--target", "pid", "--dtype",
                "float32"])
    preset = out.with_suffix(".yaml").read_text()
    assert "path: model_ema_bf16.latent.safetensors" in preset  # relative to the preset
    with caplog.at_level(logging.INFO):
        decoder = load_decoder(out)
    assert any(f"the preset beside the file, {out.with_suffix('.yaml')}" in r.message for r in caplog.records)
    ours = load_decoder(src)
    z = torch.randn(1, 16, 2, 2)
    want = ours.decode(z, 0.0, num_steps=2, generator=torch.Generator().manual_seed(0))
    got = decoder.decode(z, 0.0, num_steps=2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not torch.equal(got, decoder.decode(z.flip(1), 0.0, num_steps=2,
                                               generator=torch.Generator().manual_seed(0)))

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    Image.fromarray(skimage.data.astronaut()[:64, :64]).save(elsewhere / "photo.png")
    monkeypatch.chdir(elsewhere)
    (png,) = decode(["--ckpt", str(out), "--image", "photo.png", "--out", "x.png", "--device", "cpu",
                     "--steps", "1"])
    assert np.asarray(Image.open(png)).shape == (256, 256, 3)


def test_a_safetensors_export_carries_its_preset_inside(tmp_path, caplog):
    from safetensors import safe_open

    from pid.api import load_decoder
    from pid.weights.export import export_model

    src = tiny_run_export(tmp_path, "model.net.prediction=v", "text=gemma2", latent=True)
    done = export_model(src, tmp_path / "out" / "pid_flux.safetensors", "official")
    assert done.latent == tmp_path / "out" / "pid_flux.latent.safetensors"
    with safe_open(str(done.path), framework="pt") as f:
        meta = f.metadata()
        assert f.get_tensor("net.y_pos_embedding").dtype == torch.bfloat16
    assert json.loads(meta["pid.preset"])["net"]["prediction"] == "v" and meta["pid.target"] == "official"
    done.preset.unlink()  # only the file travels
    with caplog.at_level(logging.INFO):
        decoder = load_decoder(done.path)
    assert any("the preset inside" in r.message for r in caplog.records)
    assert decoder.text["uses_text"] and decoder.sampling["sampler"] == "euler"
    with pytest.raises(PiDConfigError, match="no preset was found beside it"):
        load_decoder(OFFICIAL / "tiny" / "v1_release.pth")


def test_a_vae_is_named_as_not_a_pid_model(tmp_path):
    from pid.decode import main as decode
    from test_latents_vae import tiny_release_vae

    tiny_release_vae("flux1").save_pretrained(tmp_path / "vae")
    (vae_file,) = (tmp_path / "vae").glob("*.safetensors")
    preset = tmp_path / "p.yaml"
    preset.write_text((ROOT / "conf" / "releases" / "flux_2k.yaml").read_text())
    from pid.utils.errors import MissingWeightsError

    with pytest.raises(MissingWeightsError, match=r"Set --latent-path /path/to/weights") as info:
        decode(["--ckpt", str(vae_file), "--release", "flux_2k", "--image", str(vae_file), "--out",
                str(tmp_path / "x.png"), "--device", "cpu"])  # the VAE's path is missing: the flag says so
    assert "latent.path" not in str(info.value)
    match = r"is not a PiD model: it holds a VAE .*--ckpt \.\.\..*--latent-path"
    with pytest.raises(PiDConfigError, match=match):
        decode(["--ckpt", str(vae_file), "--release", str(preset), "--latent", str(vae_file), "--out",
                str(tmp_path / "x.png"), "--device", "cpu"])


# ---------------------------------------------------------------------------------------- round trips
@needs_shared
@pytest.mark.parametrize("name", TINY_FILES)
def test_every_tiny_official_file_round_trips_through_every_target(tmp_path, name):
    """NVIDIA's file → each target's file (.pth and .safetensors; ComfyUI's prefixes and split adaLN) →
    back to NVIDIA's layout: the same tensors, bit for bit (float32 keeps the bf16 values)."""
    from safetensors.torch import save_file

    from pid.weights.convert import main as convert
    from pid.weights.export import target_tensors
    from pid.weights.formats import split_adaln

    from hydra.utils import instantiate

    from pid.api import net_config_for_weights
    from pid.weights import load_weights
    from pid.weights.release import load_release

    src = OFFICIAL / "tiny" / f"{name}.pth"
    preset = _tiny_preset(tmp_path, name)
    raw = torch.load(src, weights_only=True)
    ema = {("net." + k[8:] if k.startswith("net_ema.") else k): v for k, v in raw.items()
           if k.startswith("net_ema.")} or raw  # a full model.pth's release file is its EMA half

    def same(path):
        back = tmp_path / "back.pth"
        convert([str(path), str(back), "--dtype", "float32"])
        got = torch.load(back, weights_only=True)
        assert sorted(got) == sorted(ema) and all(torch.equal(got[k], ema[k].float()) for k in ema)

    for suffix in (".pth", ".safetensors"):
        out = convert([str(src), str(tmp_path / f"official{suffix}"), "--dtype", "float32"])
        same(out)
    # ComfyUI's and InvokeAI's layouts of the same tensors (the tiny nets are not full size, so the
    # contracts refuse them: the layouts are written here as those programs hold them)
    state = read_weights(src).groups["net_ema" if "net_ema.y_pos_embedding" in raw else "net"]
    for target in ("comfyui", "invokeai"):
        with pytest.raises(SystemExit, match="cannot run this model correctly"):
            convert([str(src), str(tmp_path / f"{target}.safetensors"), "--target", target])
        tensors = target_tensors(state, TARGETS[target], torch.float32)
        for prefix in ("net.", "", "model.diffusion_model."):
            for split in (False, True):
                layout = split_adaln(tensors) if split else tensors
                file = tmp_path / f"{target}_{prefix or 'bare'}_{split}.safetensors"
                save_file({prefix + k[4:]: v.contiguous() for k, v in layout.items()}, str(file))
                wf = read_weights(file)
                plain = {"net.": "official-release", "": "state-dict"}.get(prefix, "comfyui")
                assert wf.layout == ("comfyui" if split else plain)
                got = {k: v for k, v in wf.groups["net"].items()}
                ref = {k: v for k, v in state.items() if not k.startswith("adapter.aux_rgb_head.")}
                assert sorted(got) == sorted(ref) and all(torch.equal(got[k], ref[k].float()) for k in ref)
        # and it loads strictly into the network its preset builds, every tensor accounted for
        net = instantiate(net_config_for_weights(load_release(preset).net, ref))  # no aux head: dropped
        report = load_weights(net, file)
        assert report.num_left_at_init == 0 and sum(report.loaded.values()) == len(ref)
    pid = convert([str(src), str(tmp_path / "pid.safetensors"), "--target", "pid", "--dtype", "float32",
                   "--release", str(preset)])
    same(pid)


def _tiny_preset(tmp_path: Path, name: str) -> Path:
    from test_official_release import tiny_preset

    return tiny_preset(tmp_path, {"v1_release": "v1", "v1_5_student_release": "v1_5_student",
                                  "v1_5_teacher_full": "v1_5_teacher"}[name])


@needs_shared
def test_comfyuis_split_adaln_is_its_view_of_nvidias():
    """ComfyUI views adaLN_modulation.0 [6·P²·d, D] as [P², 6, d, D] and keeps chunks 0–2 / 3–5; its
    internal state dict has the shapes the manifest lists."""
    from pid.weights.formats import join_adaln, split_adaln

    d, p2, hidden = 4, 256, 16
    w = torch.randn(6 * p2 * d, hidden)
    tensors = {"pixel_embedder.proj.weight": torch.zeros(d, 3), "pixel_blocks.0.adaLN_modulation.0.weight": w}
    split = split_adaln(tensors)
    view = w.view(p2, 6, d, hidden)
    assert torch.equal(split["pixel_blocks.0.adaLN_modulation_msa.weight"], view[:, :3].reshape(-1, hidden))
    assert torch.equal(split["pixel_blocks.0.adaLN_modulation_mlp.weight"], view[:, 3:].reshape(-1, hidden))
    assert torch.equal(join_adaln(split)["pixel_blocks.0.adaLN_modulation.0.weight"], w)
    internal = json.loads((ECO / "comfyui_PiD_res2k_sr4x_official_flux_distill_4step.json").read_text())
    state, _ = _full_size("flux_2k")
    from pid.weights.export import target_tensors

    ours = {k[4:]: list(v.shape) for k, v in split_adaln(target_tensors(state, TARGETS["comfyui"],
                                                                         torch.bfloat16)).items()}
    assert ours == internal["comfy_internal_state_dict"]["keys"]
    with pytest.raises(PiDConfigError, match="without its adaLN_modulation_mlp half"):
        join_adaln({k: v for k, v in split.items() if "_mlp" not in k})


@pytest.mark.skipif(not os.environ.get("PID_OFFICIAL_CODE"), reason="set PID_OFFICIAL_CODE to a checkout of "
                    "nv-tlabs/PiD to run NVIDIA's network on the exported files")
def test_an_exported_v_model_runs_in_nvidias_network_as_in_pid(tmp_path):
    """The official PidNet built from the export's preset loads the .pth and its safetensors conversion
    strictly, predicts the same velocity as pid's network, and decodes the same image with NVIDIA's 4-step
    student rule as pid's decoder (same seeded noise)."""
    from safetensors.torch import load_file

    from pid.api import load_decoder
    from pid.diffusion.schedules import student_timesteps
    from pid.weights.convert import main as convert
    from pid.weights.export import export_model
    from pid.weights.official_code import official_networks
    from pid.weights.targets import official_args

    src = tiny_run_export(tmp_path, "model.net.prediction=v", "text=gemma2", "model/net/adapter=tiny",
                          latent=True)
    done = export_model(src, tmp_path / "model_ema_bf16.pth", dtype="float32")
    st = convert([str(done.path), str(tmp_path / "model.safetensors"), "--dtype", "float32"])
    decoder = load_decoder(done.path)
    ours = decoder.net.eval()
    ours_cfg = yaml_net(done.preset)
    args = {k: v for k, v in official_args(ours_cfg).items() if not k.startswith("_")}
    assert ours_cfg["prediction"] == "v"
    torch.manual_seed(0)
    x, t = torch.randn(2, 3, 64, 64), torch.tensor([0.3, 0.9])
    z, sigma, y = torch.randn(2, 16, 2, 2), torch.tensor([0.0, 0.4]), torch.randn(2, 16, 64)
    with official_networks(Path(os.environ["PID_OFFICIAL_CODE"]) / "pid" / "_src" / "networks") as mods:
        for state in (torch.load(done.path, weights_only=True), load_file(str(st))):
            off = mods["pid_net"].PidNet(**args, lq_in_channels=0).eval()
            off.load_state_dict({k[4:]: v for k, v in state.items()}, strict=True)
            with torch.no_grad():
                want = ours(x, t, latent=z, sigma=sigma, y=y)
                got = off(x, t * 1000, y, lq_latent=z, degrade_sigma=sigma)
            assert want.abs().max() > 0.1  # a network that computes something
            torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
            # NVIDIA's 4-step student rule (shared/official/README.md) on its network = pid's decode
            gen, t_list = torch.Generator().manual_seed(7), [0.999, 0.866, 0.634, 0.342, 0.0]
            x_t = torch.randn(2, 3, 64, 64, generator=gen)
            for i, t_i in enumerate(t_list[:-1]):
                with torch.no_grad():
                    v = off(x_t, torch.full((2,), t_i * 1000), y, lq_latent=z, degrade_sigma=sigma)
                x0 = (x_t.double() - t_i * v.double()).float()
                if t_list[i + 1] > 0:
                    x_t = (1 - t_list[i + 1]) * x0 + t_list[i + 1] * torch.randn(2, 3, 64, 64, generator=gen)
            image = decoder.decode(z, sigma, caption_states=y, sampler="sde", timesteps=student_timesteps(),
                                   num_steps=4, text_cfg=1.0, latent_cfg=1.0,
                                   generator=torch.Generator().manual_seed(7))
            torch.testing.assert_close(image, x0.clamp(-1, 1), rtol=0, atol=1e-4)


def yaml_net(preset: Path) -> dict:
    import yaml

    return yaml.safe_load(preset.read_text())["net"]
