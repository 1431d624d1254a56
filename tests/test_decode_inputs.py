"""Decoding refuses invalid inputs with a message that names the problem.

σ out of range and non-finite values are refused.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from conftest import export_tiny_decoder


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    from pid.api import load_decoder

    path = export_tiny_decoder(tmp_path_factory.mktemp("export"), "latent=sdxl", "model.sampling.num_steps=1")
    return load_decoder(path, build_latent=False)


@pytest.mark.parametrize("sigma", [1.5, -0.3, 14.6, math.nan, math.inf])
def test_sigma_outside_the_training_frame_is_refused(decoder, sigma):
    z = torch.randn(1, 4, 2, 2)
    with pytest.raises(ValueError, match="sigma") as err:
        decoder.decode(z, sigma=sigma)
    if 1 < sigma < math.inf:  # an SDXL Euler σ given without frame="ve"
        assert "frame='ve'" in str(err.value)


def test_per_sample_sigma_is_checked_too(decoder):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        decoder.decode(torch.randn(2, 4, 2, 2), sigma=torch.tensor([0.2, 1.2]))
    with pytest.raises(ValueError, match="one value per latent"):
        decoder.decode(torch.randn(2, 4, 2, 2), sigma=torch.tensor([0.2, 0.3, 0.4]))


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_latent_is_refused(decoder, bad):
    z = torch.randn(1, 4, 2, 2)
    z[0, 1, 1, 0] = bad
    with pytest.raises(ValueError, match="1 non-finite value"):
        decoder.decode(z, sigma=0.0)


@pytest.mark.parametrize("key, value", [("latent_cfg", -1.0), ("text_cfg", math.nan), ("latent_cfg", "4")])
def test_a_bad_guidance_scale_is_refused(decoder, key, value):
    with pytest.raises(ValueError, match=f"{key}=.*finite number >= 0"):
        decoder.decode(torch.randn(1, 4, 2, 2), sigma=0.0, **{key: value})


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.bool])
def test_an_integer_latent_is_refused(decoder, dtype):
    with pytest.raises(ValueError, match=f"dtype {dtype}.*encode images first"):
        decoder.decode(torch.ones(1, 4, 2, 2, dtype=dtype), sigma=0.0)


def test_numpy_and_torch_guidance_scales_are_numbers(decoder):
    import numpy as np

    for scale in (np.float32(2.0), torch.tensor(2.0)):
        assert decoder.decode(torch.randn(1, 4, 2, 2), sigma=0.0, latent_cfg=scale).isfinite().all()


def test_valid_inputs_still_decode(decoder):
    z = torch.randn(1, 4, 2, 2)
    out = decoder.decode(z, sigma=0.3, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all()
    ve = decoder.decode(
        z, sigma=14.6, frame="ve", generator=torch.Generator().manual_seed(0)
    )  # Euler σ, converted
    assert torch.isfinite(ve).all()
    with pytest.raises(ValueError, match=">= 0"):
        decoder.decode(z, sigma=-1.0, frame="ve")


@pytest.mark.parametrize("shape", [(1, 16, 2, 2), (2, 3, 2, 2)])
def test_a_latent_of_another_channel_count_is_refused_with_the_shape_given(decoder, shape):
    """Checked before guidance batches the latent, so the message shows the caller's shape (and batch)."""
    with pytest.raises(ValueError, match=r"latent must be \(B, 4, h, w\) for this decoder, got "
                       + re.escape(str(shape))):
        decoder.decode(torch.randn(*shape))
