"""`python -m pid.decode`: a saved latent (safetensors or .pt) with a σ → an image file, without the latent
space's weights."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from conftest import export_tiny_decoder


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    # a VAE latent space whose weights are NOT on this machine: decoding must not need them
    return export_tiny_decoder(tmp_path_factory.mktemp("export"), "latent=sdxl", "model.sampling.num_steps=2")


def test_cli_decodes_safetensors_and_pt_latents(tiny_export, tmp_path):
    from safetensors.torch import save_file

    from pid.decode import main

    z = torch.randn(1, 4, 2, 3)
    save_file({"latent": z, "sigma": torch.tensor([0.3])}, str(tmp_path / "z.safetensors"))
    (path,) = main(
        [
            "--ckpt",
            str(tiny_export),
            "--latent",
            str(tmp_path / "z.safetensors"),
            "--out",
            str(tmp_path / "img.png"),
            "--device",
            "cpu",
        ]
    )
    with Image.open(path) as img:
        assert img.size == (3 * 8 * 4, 2 * 8 * 4)  # latent grid × VAE down × sr_scale

    torch.save({"latent": torch.randn(2, 4, 2, 2)}, tmp_path / "z.pt")  # an SDXL Euler state, B = 2
    paths = main(
        [
            "--ckpt",
            str(tiny_export),
            "--latent",
            str(tmp_path / "z.pt"),
            "--sigma",
            "1.5",
            "--frame",
            "ve",
            "--out",
            str(tmp_path / "sdxl.png"),
            "--steps",
            "1",
            "--device",
            "cpu",
        ]
    )
    assert [p.name for p in paths] == ["sdxl_0.png", "sdxl_1.png"] and all(p.is_file() for p in paths)


def test_cli_reports_wrong_channels_and_missing_files(tiny_export, tmp_path):
    from pid.decode import main
    from pid.utils.errors import MissingWeightsError, PiDConfigError

    torch.save(torch.randn(16, 2, 2), tmp_path / "z16.pt")
    with pytest.raises(PiDConfigError, match="4"):
        main(
            [
                "--ckpt",
                str(tiny_export),
                "--latent",
                str(tmp_path / "z16.pt"),
                "--out",
                str(tmp_path / "x.png"),
            ]
        )
    with pytest.raises(MissingWeightsError, match="ckpt"):
        main(
            [
                "--ckpt",
                str(tmp_path / "none.safetensors"),
                "--latent",
                str(tmp_path / "z16.pt"),
                "--out",
                str(tmp_path / "x.png"),
            ]
        )
