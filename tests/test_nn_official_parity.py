"""Bit-exact parity with NVIDIA's reference networks (optional).

Runs only when PID_OFFICIAL_NETWORKS points at the official ``pid/_src/networks``
directory (pixeldit_official.py, pid_net.py, lq_projection_2d.py), e.g.
``PID_OFFICIAL_NETWORKS=/path/to/PiD/pid/_src/networks pytest tests/test_nn_official_parity.py``.
The official state dict is loaded (strict) into our PiDNet through
``convert_official_state_dict`` and both networks are run on the same inputs.
"""

import functools
import os

import pytest
import torch

from pid.nn import LatentAdapter, PiDNet, PixelDiT
from pid.weights import convert_official_state_dict

REF = os.environ.get("PID_OFFICIAL_NETWORKS")
pytestmark = pytest.mark.skipif(
    not REF, reason="set PID_OFFICIAL_NETWORKS to the official networks directory"
)


@pytest.fixture(scope="module")
def official():
    """The reference network modules (framework imports stubbed while the tests run, removed afterwards)."""
    from pid.weights.official_code import official_networks

    with official_networks(REF) as mods:
        yield mods


KW = dict(
    in_channels=3,
    num_groups=4,
    hidden_size=64,
    pixel_hidden_size=8,
    pixel_attn_hidden_size=48,
    pixel_num_groups=4,
    patch_depth=4,
    pixel_depth=2,
    patch_size=8,
    txt_embed_dim=32,
    txt_max_length=12,
)


@pytest.mark.parametrize("rope_mode", ["original", "ntk_aware"])
@pytest.mark.parametrize("v15", [False, True], ids=["v1", "v1.5"])
def test_matches_official(official, rope_mode, v15):
    torch.manual_seed(0)
    off = official["pid_net"].PidNet(
        **KW,
        rope_mode=rope_mode,
        rope_ref_h=32,
        rope_ref_w=32,
        lq_in_channels=0,
        lq_latent_channels=16,
        lq_hidden_dim=32,
        lq_gate_type="sigma_aware_per_token" if v15 else "sigma_aware_per_token_per_dim",
        lq_interval=2,
        sr_scale=4,
        latent_spatial_down_factor=8,
        pit_lq_inject=v15,
        lq_aux_rgb_head=v15,
        lq_conv_padding_mode="replicate" if v15 else "zeros",
    )
    with torch.no_grad():
        for p in off.parameters():  # random everything, zero-init heads included
            p.normal_(0, 0.05)
    adapter = functools.partial(
        LatentAdapter,
        width=32,
        gate="per_token" if v15 else "per_token_per_channel",
        pit_injection=v15,
        aux_rgb_head=v15,
        padding_mode="replicate" if v15 else "zeros",
    )
    ours = PiDNet(
        adapter=adapter,
        latent_channels=16,
        latent_down=8,
        sr_scale=4,
        rope_mode=rope_mode,
        rope_ref_h=32,
        rope_ref_w=32,
        **KW,
    )
    ours.load_state_dict(convert_official_state_dict(off.state_dict()), strict=True)

    B, H, W = 2, 64, 32  # non-square, and off the NTK reference grid in height
    x, t, y = torch.randn(B, 3, H, W), torch.rand(B), torch.randn(B, 10, 32)
    z, sigma = torch.randn(B, 16, H // 32, W // 32), torch.rand(B)
    with torch.no_grad():
        ref = off(x, t * 1000, y, lq_latent=z, degrade_sigma=sigma, return_lq_aux=v15)
        v, extras = ours(x, t, latent=z, sigma=sigma, y=y, return_extras=True)
        prior_ref = official["pixeldit_official"].PixDiT_T2I.forward(off, x, t * 1000, y)
        prior = PixelDiT.forward(ours, x, t, y)
    if v15:
        ref, aux = ref
        assert torch.equal(aux["pred_lq_rgb"], extras["aux_rgb"])
    assert torch.equal(ref, v)
    assert torch.equal(prior_ref, prior)
