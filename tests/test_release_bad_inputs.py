"""Released-weights inputs that used to pass silently now stop with a clear error."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from pid.utils.errors import PiDConfigError
from test_official_release import OFFICIAL, pytestmark, tiny_preset  # noqa: F401 (skip without shared/)


def test_official_net_config_refuses_misspelt_and_missing_arguments():
    from pid.weights import net_config_from_official

    cfg = json.loads((OFFICIAL / "tiny" / "v1_5_student_release.config.json").read_text())
    net = dict(cfg["net_config"])
    net["lq_conv_padding_modex"] = net.pop("lq_conv_padding_mode")  # a typo would take the default 'zeros'
    with pytest.raises(PiDConfigError, match="lq_conv_padding_modex"):
        net_config_from_official(net)
    with pytest.raises(PiDConfigError, match="net_config"):  # the whole file instead of its net_config
        net_config_from_official(cfg)
    missing = dict(cfg["net_config"])
    del missing["lq_conv_padding_mode"]
    with pytest.raises(PiDConfigError, match="missing"):
        net_config_from_official(missing)


GEOMETRY_16X = {"_target_": "pid.latents.geometry.LatentGeometry", "channels": 16, "down_factor": 16}


@pytest.mark.parametrize("key, value, match", [("sr_scale", 8, "sr_scale is 8"),
                                               ("latent", GEOMETRY_16X, "down_factor")])
def test_a_preset_that_contradicts_its_network_is_refused(tmp_path, key, value, match):
    from pid.weights.release import load_release

    path = tiny_preset(tmp_path, "v1_5_student")
    data = yaml.safe_load(path.read_text())
    data[key] = value
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(PiDConfigError, match=match):
        load_release(path)


def test_a_broken_preset_says_what_is_wrong(tmp_path):
    from pid.weights.release import load_release

    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: student\nnet: [1, 2\n")
    with pytest.raises(PiDConfigError, match="cannot be read"):
        load_release(bad)
    data = yaml.safe_load(tiny_preset(tmp_path, "v1_5_student").read_text())
    data["net"]["hidden_sizee"] = 16
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(PiDConfigError, match="does not build.*hidden_sizee"):
        load_release(bad).build_net()


def test_ve_frame_only_for_vp_latents_and_zero_steps_refused(tmp_path):
    from pid.api import load_decoder

    decoder = load_decoder(OFFICIAL / "tiny" / "v1_release.pth", release=tiny_preset(tmp_path, "v1"))
    z = torch.randn(1, 16, 2, 2)
    with pytest.raises(ValueError, match="'flow' frame"):  # a flow latent has no Euler/VE frame
        decoder.decode(z, sigma=2.0, frame="ve")
    with pytest.raises(ValueError, match="num_steps must be an integer >= 1"):
        decoder.decode(z, sigma=0.0, num_steps=0)


def test_unreadable_files_give_one_clear_error(tmp_path):
    from pid.decode import read_latent
    from pid.weights import read_weights

    (tmp_path / "cut.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(PiDConfigError, match="safetensors"):
        read_weights(tmp_path / "cut.safetensors")
    with pytest.raises(PiDConfigError, match="safetensors"):
        read_latent(tmp_path / "cut.safetensors")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file at all")
    with pytest.raises(PiDConfigError, match="weights-only torch file"):
        read_latent(tmp_path / "junk.pt")
    with pytest.raises(PiDConfigError, match=r"junk.pt is not a weights file: .* starts with b'not a to"):
        read_weights(tmp_path / "junk.pt")


def test_a_file_of_another_model_is_refused_before_the_network_is_allocated(monkeypatch):
    """A paper-size preset with a tiny file: the shapes are compared on the meta device first."""
    from pid.api import load_decoder
    from pid.weights import release

    built = []
    original = release.Release.build_net
    monkeypatch.setattr(release.Release, "build_net",
                        lambda self: built.append(torch.empty(0).device.type) or original(self))
    with pytest.raises(PiDConfigError, match="shape"):
        load_decoder(OFFICIAL / "tiny" / "v1_5_student_release.pth", release="flux_2kto4k_v1pt5")
    assert built == ["meta"]


@pytest.mark.parametrize("section, key, value, match", [
    ("sampling", "t_list", [1.5, 0.866, 0.634, 0.342], r"\(0, 1\]"),
    ("sampling", "num_steps", "four", "integer"),
    ("sampling", "num_steps", 7, "num_steps must be in"),  # more steps than the t-list has
    ("sampling", "sampler", "dpm", "unknown sampler"),
    ("time", "shift_rule", "max-side", "shift rule"),
    ("time", "shift_base", -6.0, "shift_base"),
])
def test_a_preset_with_invalid_sampling_or_time_is_refused_at_load(tmp_path, section, key, value, match):
    from pid.weights.release import load_release

    path = tiny_preset(tmp_path, "v1_5_student")
    data = yaml.safe_load(path.read_text())
    data[section][key] = value
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(PiDConfigError, match=match):
        load_release(path)


def test_decode_arguments_of_the_wrong_kind_are_refused(tmp_path):
    from pid.api import load_decoder

    decoder = load_decoder(OFFICIAL / "tiny" / "v1_5_student_release.pth",
                           release=tiny_preset(tmp_path, "v1_5_student"))
    z = torch.randn(1, 16, 2, 2)
    for kwargs, match in (({"frame": "vp"}, "'flow' frame"), ({"num_steps": 2.5}, "integer"),
                          ({"sigma": "0.3"}, "sigma must be a number")):
        with pytest.raises(ValueError, match=match):
            decoder.decode(z, **kwargs)
    with pytest.raises(ValueError, match="non-empty"):
        decoder.decode(torch.randn(0, 16, 2, 2))


def test_cli_file_inputs_that_cannot_be_read_say_so(tmp_path):
    import numpy as np

    from pid.decode import main, read_latent
    from pid.weights.export import main as export

    np.save(tmp_path / "z.npy", np.zeros((16, 2, 2), np.float32))
    with pytest.raises(PiDConfigError, match="convert a .npy"):
        read_latent(tmp_path / "z.npy")
    preset, ckpt = tiny_preset(tmp_path, "v1_5_student"), OFFICIAL / "tiny" / "v1_5_student_release.pth"
    for image in (tmp_path / "missing.png", tmp_path / "z.npy"):
        with pytest.raises(PiDConfigError, match="--image"):
            main(["--release", str(preset), "--ckpt", str(ckpt), "--image", str(image), "--out",
                  str(tmp_path / "o.png"), "--device", "cpu"])
    with pytest.raises(SystemExit, match="being exported"):  # would overwrite the model it reads
        export([str(ckpt), str(ckpt)])
