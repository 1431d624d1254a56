"""PixelDiT backbone: shapes, input checks, RoPE/NTK, text handling, official naming, paper size."""

import math

import pytest
import torch

from pid.nn import PixelDiT, rope_1d, rope_2d
from pid.weights import convert_official_state_dict
from pid.nn.layers import FeedForward, ntk_theta, timestep_embedding

from conftest import tiny_backbone_kwargs


def make(seed=0, **over):
    """Tiny PixelDiT with a non-zero output layer (the official init zeroes it; a trained prior does not)."""
    torch.manual_seed(seed)
    net = PixelDiT(**tiny_backbone_kwargs(**over))
    with torch.no_grad():
        net.final_layer.linear.weight.normal_(0, 0.1)
        net.final_layer.linear.bias.normal_(0, 0.1)
    return net.eval()


PAPER = dict(
    in_channels=3,
    hidden_size=1536,
    num_groups=24,
    pixel_hidden_size=16,
    pixel_attn_hidden_size=1152,
    pixel_num_groups=16,
    patch_depth=14,
    pixel_depth=2,
    patch_size=16,
    txt_embed_dim=2304,
    txt_max_length=300,
)


# --------------------------------------------------------------------------- shapes and inputs


@pytest.mark.parametrize(
    "patch_size,hw", [(16, (64, 64)), (16, (48, 32)), (16, (32, 64)), (8, (48, 32)), (8, (32, 64))]
)
def test_output_shape_any_aspect(patch_size, hw):
    net = make(patch_size=patch_size)
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        v = net(x, torch.rand(2), torch.randn(2, 5, 32))
        v0 = net(x, torch.rand(2))  # no text stream
    assert v.shape == x.shape and v0.shape == x.shape
    assert torch.isfinite(v).all() and v.abs().sum() > 0


def test_fresh_network_predicts_zero():
    """Official init: zero final layer -> v = 0 until trained (why tests randomise it)."""
    net = PixelDiT(**tiny_backbone_kwargs())
    with torch.no_grad():
        assert torch.equal(net(torch.randn(1, 3, 32, 32), torch.rand(1)), torch.zeros(1, 3, 32, 32))


def test_x0_prediction_turns_the_clean_image_estimate_into_the_velocity():
    """prediction="x0": the same weights' output is x̂₀, so v = (x_t − x̂₀)/max(t, t_min) and x_t − t·v = x̂₀."""
    v_net, x0_net = make(seed=3), make(seed=3, prediction="x0", x0_t_min=0.05)
    x, t = torch.randn(3, 3, 32, 32), torch.tensor([0.9, 0.3, 0.01])
    with torch.no_grad():
        raw, v = v_net(x, t), x0_net(x, t)  # raw = the final layer's output, read as v or as x̂₀
    assert torch.allclose(x[:2] - t[:2].view(-1, 1, 1, 1) * v[:2], raw[:2], atol=1e-5)
    assert torch.allclose(v[2], (x[2] - raw[2]) / 0.05, atol=1e-5)  # t below t_min: divided by t_min
    with pytest.raises(ValueError, match="prediction"):
        PixelDiT(**tiny_backbone_kwargs(prediction="eps"))


def test_edm_prediction_reads_the_output_through_the_preconditioning():
    """prediction="edm": the same weights' output is F, and v = flow.v_from_edm_output(x_t, F, t, σ_d)."""
    from pid.diffusion import flow

    v_net, edm_net = make(seed=3), make(seed=3, prediction="edm", sigma_data=0.6)
    x, t = torch.randn(3, 3, 32, 32), torch.tensor([1.0, 0.3, 0.0])
    with torch.no_grad():
        raw, v = v_net(x, t), edm_net(x, t)
    torch.testing.assert_close(v, flow.v_from_edm_output(x, raw, t, 0.6))
    torch.testing.assert_close(x[2] - 0.0 * v[2], x[2])  # t = 0: x̂₀ = x_t whatever the output
    torch.testing.assert_close(x[0] - v[0], 0.6 * raw[0])  # t = 1: x̂₀ = σ_d·F


@pytest.mark.parametrize("over,match", [({"sigma_data": 0.0}, "sigma_data"),
                                        ({"sigma_data": float("nan")}, "sigma_data"),
                                        ({"sigma_data": "abc"}, "sigma_data must be a number"),
                                        ({"sigma_data": None}, "sigma_data must be a number"),
                                        ({"x0_t_min": 0.0}, "x0_t_min"), ({"x0_t_min": 2.0}, "x0_t_min")])
def test_prediction_constants_are_checked(over, match):
    with pytest.raises(ValueError, match=match):
        PixelDiT(**tiny_backbone_kwargs(**over))


@pytest.mark.parametrize("hw", [(40, 32), (32, 20), (7, 16)])
def test_side_not_multiple_of_patch_raises(hw):
    net = make()
    with pytest.raises(ValueError, match="patch_size=16"):
        net(torch.randn(1, 3, *hw), torch.rand(1))


def test_bad_text_and_timestep_shapes_raise():
    net = make()
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="y must be"):
        net(x, torch.rand(2), torch.randn(2, 4, 31))
    with pytest.raises(ValueError, match="one value per sample"):
        net(x, torch.rand(3))


def test_timestep_is_scaled_by_1000_and_matters():
    net = make()
    x = torch.randn(1, 3, 32, 32)
    ctx = net.embed(x, torch.tensor([0.25]))
    with torch.no_grad():
        ref = net.t_embedder.mlp(timestep_embedding(torch.tensor([250.0]), 256, max_period=10.0))
        assert torch.allclose(ctx.t_emb.view(1, -1), ref)
        assert not torch.allclose(net(x, torch.tensor([0.2])), net(x, torch.tensor([0.8])))


# --------------------------------------------------------------------------- text


def test_no_text_branch_when_y_is_none():
    net = make().train()
    net(torch.randn(1, 3, 32, 32), torch.rand(1)).square().mean().backward()
    text_params = [net.y_embedder.proj.weight, net.y_pos_embedding, net.patch_blocks[0].attn.qkv_y.weight]
    assert all(p.grad is None for p in text_params)
    assert net.s_embedder.proj.weight.grad is not None


def test_text_changes_output_and_mask_hides_padding():
    net = make()
    x, t = torch.randn(1, 3, 32, 32), torch.rand(1)
    y = torch.randn(1, 6, 32)
    y2 = y.clone()
    y2[:, 4:] = torch.randn(1, 2, 32)  # change only the "padding" tokens
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    with torch.no_grad():
        assert not torch.allclose(net(x, t, y), net(x, t))
        assert not torch.allclose(net(x, t, y), net(x, t, y2))  # unmasked: padding is attended
        assert torch.allclose(net(x, t, y, mask), net(x, t, y2, mask), atol=1e-6)


def test_text_longer_than_max_is_truncated():
    net = make()
    x, t = torch.randn(1, 3, 32, 32), torch.rand(1)
    y = torch.randn(1, 12, 32)
    with torch.no_grad():
        assert torch.equal(net(x, t, y), net(x, t, y[:, :8]))


def test_last_block_text_output_branch_frozen():
    net = make()
    last = net.patch_blocks[-1]
    assert not any(
        p.requires_grad for m in (last.attn.proj_y, last.norm_y2, last.mlp_y) for p in m.parameters()
    )
    assert all(p.requires_grad for p in net.patch_blocks[0].parameters())


# --------------------------------------------------------------------------- RoPE


def test_rope_ntk_only_changes_freqs_off_reference():
    head_dim = 16
    plain = rope_2d(head_dim, 4, 6)
    same = rope_2d(head_dim, 4, 6, ref_grid=(4, 6))
    assert torch.equal(plain[0], same[0]) and torch.equal(plain[1], same[1])
    bigger = rope_2d(head_dim, 8, 6, ref_grid=(4, 6))
    assert not torch.allclose(bigger[0], rope_2d(head_dim, 8, 6)[0])
    # only the y (odd) pairs change when only the height differs from the reference
    assert torch.equal(bigger[0][:, 0::2], rope_2d(head_dim, 8, 6)[0][:, 0::2])
    assert not torch.allclose(bigger[0][:, 1::2], rope_2d(head_dim, 8, 6)[0][:, 1::2])
    # NTK formula: theta * s^(d / (d - 2)), d = head_dim / 2
    assert math.isclose(ntk_theta(1e4, 8, 4, 8), 1e4 * 2 ** (8 / 6))


def test_rope_positions_are_interpolated_and_shapes():
    cos, sin = rope_2d(16, 3, 5)
    assert cos.shape == sin.shape == (15, 8)
    assert torch.allclose(cos.square() + sin.square(), torch.ones_like(cos))
    # the last column sits at position 16 whatever the grid size (pair 0 = x axis, frequency 1)
    assert torch.allclose(
        torch.atan2(sin[4, 0], cos[4, 0]),
        torch.atan2(torch.sin(torch.tensor(16.0)), torch.cos(torch.tensor(16.0))),
    )
    cos1, _ = rope_1d(16, 7)
    assert cos1.shape == (7, 8)


def test_ntk_model_matches_original_at_reference_size_only():
    a = make(rope_mode="original")
    b = PixelDiT(**tiny_backbone_kwargs(rope_mode="ntk_aware", rope_ref_h=32, rope_ref_w=64))
    b.load_state_dict(a.state_dict())
    b.eval()
    t = torch.rand(1)
    with torch.no_grad():
        x = torch.randn(1, 3, 32, 64)
        assert torch.equal(a(x, t), b(x, t))
        x = torch.randn(1, 3, 64, 64)
        assert not torch.allclose(a(x, t), b(x, t))


# --------------------------------------------------------------------------- naming and size


def test_official_parameter_names():
    keys = set(make().state_dict())
    for k in [
        "pixel_embedder.proj.weight",
        "s_embedder.proj.weight",
        "t_embedder.mlp.0.weight",
        "t_embedder.mlp.2.weight",
        "y_embedder.proj.weight",
        "y_embedder.norm.weight",
        "y_pos_embedding",
        "patch_blocks.0.attn.qkv_x.weight",
        "patch_blocks.0.attn.qkv_y.weight",
        "patch_blocks.0.attn.proj_x.bias",
        "patch_blocks.0.attn.q_norm_x.weight",
        "patch_blocks.0.attn.k_norm_y.weight",
        "patch_blocks.0.adaLN_modulation_img.0.weight",
        "patch_blocks.0.adaLN_modulation_txt.0.weight",
        "patch_blocks.0.mlp_x.w1.weight",
        "patch_blocks.0.mlp_y.w3.weight",
        "pixel_blocks.0.compress_to_attn.weight",
        "pixel_blocks.0.expand_from_attn.weight",
        "pixel_blocks.0.attn.qkv.weight",
        "pixel_blocks.0.attn.q_norm.weight",
        "pixel_blocks.0.mlp.fc1.weight",
        "pixel_blocks.0.adaLN_modulation.0.weight",
        "final_layer.norm.weight",
        "final_layer.linear.weight",
    ]:
        assert k in keys, k


def test_convert_official_state_dict_renames_adapter_keys():
    sd = {
        "net.patch_blocks.0.attn.qkv_x.weight": 1,
        "lq_proj.latent_proj.0.weight": 2,
        "lq_proj.gate_modules.3.log_alpha": 3,
        "lq_proj.lq_aux_rgb_head.1.weight": 4,
        "pit_lq_gate.content_proj.bias": 5,
        "lq_proj.image_conv.0.weight": 6,
    }
    assert convert_official_state_dict(sd) == {
        "patch_blocks.0.attn.qkv_x.weight": 1,
        "adapter.latent_proj.0.weight": 2,
        "adapter.gate_modules.3.log_alpha": 3,
        "adapter.aux_rgb_head.1.weight": 4,
        "adapter.pit_gate.content_proj.bias": 5,
    }


def test_paper_size_is_1p3b():
    with torch.device("meta"):
        net = PixelDiT(**PAPER)
    n = sum(p.numel() for p in net.parameters())
    print(f"\npaper PixelDiT parameters: {n:,}")
    assert 1.17e9 <= n <= 1.43e9
    # SwiGLU inner width of the official code: int(2/3 * 4 * 1536) = 4096
    assert net.patch_blocks[0].mlp_x.w1.out_features == 4096
    assert isinstance(net.patch_blocks[0].mlp_x, FeedForward)
    assert net.pixel_blocks[0].compress_to_attn.weight.shape == (1152, 16 * 16 * 16)
