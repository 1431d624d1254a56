"""Sigma-aware latent adapter and PiDNet: gates, zero-init no-op, grid alignment, injection, freezing."""

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from pid.nn import LatentAdapter, PiDNet, PixelDiT, SigmaAwareGate, latent_grid_ratio

from conftest import TINY_ADAPTERS, tiny_backbone_kwargs, tiny_pid_net

V1, V15 = TINY_ADAPTERS["v1"], TINY_ADAPTERS["v1_5"]


def make(adapter_cfg=V1, **kw):
    """Tiny PiDNet whose backbone output layer is non-zero (as for a trained prior)."""
    net = tiny_pid_net(adapter_cfg, **kw)
    with torch.no_grad():
        net.final_layer.linear.weight.normal_(0, 0.1)
        net.final_layer.linear.bias.normal_(0, 0.1)
    return net


def perturb_heads(net, pit=False):
    with torch.no_grad():
        for head in net.adapter.output_heads:
            head.weight.normal_(0, 0.5)
        if pit:
            net.adapter.pit_head.weight.normal_(0, 0.5)


def latent_for(net, B, H, W):
    r = net.sr_scale * net.latent_down
    return torch.randn(B, net.latent_channels, H // r, W // r)


PAPER = dict(
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


# --------------------------------------------------------------------------- gate


@pytest.mark.parametrize("mode", ["per_token", "per_token_per_channel"])
def test_gate_values_at_init(mode):
    torch.manual_seed(0)
    gate = SigmaAwareGate(64, mode)
    assert torch.allclose(gate.content_proj.bias, torch.full_like(gate.content_proj.bias, 2.0))
    assert math.isclose(gate.log_alpha.item(), math.log(5.0), rel_tol=1e-6)
    assert 0.008 < gate.content_proj.weight.detach().std().item() < 0.012  # N(0, 0.01): gate is not zero-init
    sigma = torch.tensor([0.0, 0.4, 1.0])
    expected = torch.tensor([0.88, 0.5, 0.05])
    zeros = torch.zeros(3, 10, 64)
    g0 = gate.gate(zeros, zeros, sigma)
    assert g0.shape == ((3, 10, 1) if mode == "per_token" else (3, 10, 64))
    assert torch.allclose(g0.mean(dim=(1, 2)), expected, atol=0.005)
    h = torch.randn(3, 10, 64)  # unit-scale hidden state: still close to the nominal values
    assert torch.allclose(gate.gate(h, torch.zeros_like(h), sigma).mean(dim=(1, 2)), expected, atol=0.03)


def test_gate_forward_is_h_plus_g_l():
    gate = SigmaAwareGate(8, "per_token")
    h, feat, s = torch.randn(2, 5, 8), torch.randn(2, 5, 8), torch.rand(2)
    assert torch.allclose(gate(h, feat, s), h + gate.gate(h, feat, s) * feat)
    with pytest.raises(ValueError, match="per_token"):
        SigmaAwareGate(8, "per_channel")


# --------------------------------------------------------------------------- zero-init no-op and injection


@pytest.mark.parametrize("cfg", [V1, V15], ids=["v1", "v1.5"])
def test_adapter_is_exact_noop_at_init(cfg):
    net = make(cfg)
    x, t, y = torch.randn(2, 3, 64, 32), torch.rand(2), torch.randn(2, 5, 32)
    z = latent_for(net, 2, 64, 32)
    with torch.no_grad():
        prior = net(x, t, y=y)
        cond = net(x, t, latent=z, sigma=torch.rand(2), y=y)
    assert prior.abs().sum() > 0
    assert torch.equal(prior, cond)


@pytest.mark.parametrize("cfg", [V1, V15], ids=["v1", "v1.5"])
def test_perturbed_head_makes_latent_matter(cfg):
    net = make(cfg)
    x, t = torch.randn(2, 3, 64, 32), torch.rand(2)
    z = latent_for(net, 2, 64, 32)
    with torch.no_grad():
        prior = net(x, t)
        net.adapter.output_heads[1].weight.normal_(0, 0.5)
        out = net(x, t, latent=z)
        assert not torch.allclose(out, prior, atol=1e-4)
        assert not torch.allclose(out, net(x, t, latent=torch.randn_like(z)), atol=1e-4)
        assert not torch.allclose(
            out, net(x, t, latent=z, sigma=torch.ones(2)), atol=1e-5
        )  # sigma acts via gates


def test_pit_injection_reaches_output():
    net = make(V15)
    x, t = torch.randn(1, 3, 32, 32), torch.rand(1)
    z = latent_for(net, 1, 32, 32)
    with torch.no_grad():
        prior = net(x, t)
        net.adapter.pit_head.weight.normal_(0, 0.5)
        assert not torch.allclose(net(x, t, latent=z), prior, atol=1e-4)


def test_latent_keep_restores_prior_per_sample():
    net = make(V15)
    perturb_heads(net, pit=True)
    x, t = torch.randn(2, 3, 32, 32), torch.rand(2)
    z = latent_for(net, 2, 32, 32)
    with torch.no_grad():
        prior = net(x, t)
        out = net(x, t, latent=z, latent_keep=torch.tensor([False, True]))
    assert torch.equal(out[0], prior[0])
    assert not torch.allclose(out[1], prior[1], atol=1e-4)


def test_gradient_reaches_zero_init_heads():
    net = make(V15).train()
    x, t = torch.randn(2, 3, 32, 32), torch.rand(2)
    z = latent_for(net, 2, 32, 32)
    v, extras = net(x, t, latent=z, sigma=torch.rand(2), return_extras=True)
    (v.square().mean() + extras["aux_rgb"].square().mean()).backward()
    for head in [*net.adapter.output_heads, net.adapter.pit_head]:
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    assert all(g.content_proj.weight.grad is not None for g in net.adapter.gate_modules)


def test_injection_points_every_interval():
    with torch.device("meta"):
        a = LatentAdapter(16, 1536, 14, 16, 8, 4, interval=2)
    assert a.injection_blocks == (0, 2, 4, 6, 8, 10, 12) and len(a.output_heads) == len(a.gate_modules) == 7
    assert [a.injection_index(i) for i in range(4)] == [0, None, 1, None]
    net = make(V1, patch_depth=5)
    assert net.adapter.injection_blocks == (0, 2, 4)
    calls = []
    for k, g in enumerate(net.adapter.gate_modules):
        g.register_forward_hook(lambda m, i, o, k=k: calls.append(k))
    with torch.no_grad():
        net(torch.randn(1, 3, 32, 32), torch.rand(1), latent=latent_for(net, 1, 32, 32))
    assert calls == [0, 1, 2]


# --------------------------------------------------------------------------- shapes and grid alignment


@pytest.mark.parametrize(
    "patch_size,sr_scale,latent_down,hw",
    [
        (16, 4, 8, (64, 64)),  # 4x, ratio 2: upsample
        (16, 4, 8, (64, 32)),
        (16, 4, 8, (32, 64)),
        (16, 8, 8, (64, 64)),  # 8x, ratio 4
        (8, 4, 8, (64, 32)),  # tiny patch 8, ratio 4
        (8, 8, 8, (64, 64)),  # ratio 8
        (16, 4, 4, (48, 32)),  # ratio 1: latent on the patch grid
        (16, 4, 2, (48, 32)),  # ratio 1/2: fold
    ],
)
def test_shapes_across_scales_and_aspects(patch_size, sr_scale, latent_down, hw):
    cfg = dict(V15) if patch_size % sr_scale == 0 else dict(V15, aux_rgb_head=False)
    net = make(cfg, patch_size=patch_size, sr_scale=sr_scale, latent_down=latent_down)
    perturb_heads(net, pit=True)
    H, W = hw
    z = latent_for(net, 2, H, W)
    x = torch.randn(2, 3, H, W)
    with torch.no_grad():
        v, ex = net(x, torch.rand(2), latent=z, sigma=torch.rand(2), return_extras=True, feature_blocks=(1,))
    assert v.shape == x.shape and torch.isfinite(v).all()
    assert ex["features"][1].shape == (2, 64, H // patch_size, W // patch_size)
    if cfg["aux_rgb_head"]:
        assert ex["aux_rgb"].shape == (2, 3, H // sr_scale, W // sr_scale)


def test_grid_alignment_upsample_and_fold():
    up = LatentAdapter(4, 32, 2, 16, latent_down=8, sr_scale=4, width=16)  # ratio 2
    z = torch.randn(1, 4, 3, 2)
    assert torch.equal(up.align(z, (6, 4)), z.repeat_interleave(2, 2).repeat_interleave(2, 3))
    fold = LatentAdapter(4, 32, 2, 16, latent_down=2, sr_scale=4, width=16)  # ratio 1/2
    assert fold.latent_proj[0].in_channels == 16
    z = torch.randn(1, 4, 6, 4)
    a = fold.align(z, (3, 2))
    assert a.shape == (1, 16, 3, 2)
    # channel c*4 + 2i + j of cell (p, q) is latent pixel (2p + i, 2q + j) of channel c
    assert torch.equal(a[0, 1 * 4 + 2 * 1 + 0, 2, 1], z[0, 1, 5, 2])
    # as the official LQProjection2D: a finer latent of another size is bilinear-resized, then folded
    odd = torch.randn(1, 4, 5, 4)
    want = F.interpolate(odd, size=(6, 4), mode="bilinear", align_corners=False)
    assert torch.equal(fold.align(odd, (3, 2)), fold.align(want, (3, 2)))
    # a coarser latent is nearest-resized to the grid whatever its size (ratio 4 / 8 latents of v1 FLUX.2,
    # DINOv2, SigLIP on a ratio-2 net; an encoder-rounded 48 px latent)
    assert up.align(torch.randn(1, 4, 1, 1), (8, 8)).shape == (1, 4, 8, 8)
    assert up.align(torch.randn(1, 4, 2, 1), (3, 2)).shape == (1, 4, 3, 2)
    # larger than the patch grid (the latent of the high-resolution image): an error
    with pytest.raises(ValueError, match="latent spatial size"):
        up.align(torch.randn(1, 4, 12, 8), (6, 4))
    with pytest.raises(ValueError, match=r"\(B, 4, h, w\)"):
        up.align(torch.randn(1, 3, 3, 2), (6, 4))


def test_packed_latent_unpatchify():
    packed = LatentAdapter(16, 32, 2, 16, latent_down=16, sr_scale=4, width=16, latent_unpatchify=2)
    plain = LatentAdapter(4, 32, 2, 16, latent_down=8, sr_scale=4, width=16)
    z = torch.randn(1, 4, 4, 4)
    z_packed = z.view(1, 4, 2, 2, 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(1, 16, 2, 2)
    assert torch.equal(packed.align(z_packed, (8, 8)), plain.align(z, (8, 8)))


@pytest.mark.parametrize("sr_scale,latent_down,patch_size", [(3, 8, 16), (4, 6, 16), (6, 8, 8), (4, 8, 96)])
def test_impossible_ratio_raises(sr_scale, latent_down, patch_size):
    with pytest.raises(ValueError, match=rf"{sr_scale} \* {latent_down} / {patch_size}"):
        latent_grid_ratio(sr_scale, latent_down, patch_size)
    with pytest.raises(ValueError, match="sr_scale"):
        make(V1, sr_scale=sr_scale, latent_down=latent_down, patch_size=patch_size)


def test_ratio_values():
    assert latent_grid_ratio(4, 8, 16) == 2
    assert latent_grid_ratio(8, 16, 16) == 8
    assert latent_grid_ratio(4, 2, 16) == 0.5


def test_side_not_multiple_of_patch_raises():
    net = make(V1)
    with pytest.raises(ValueError, match="patch_size=16"):
        net(torch.randn(1, 3, 40, 32), torch.rand(1), latent=torch.randn(1, 4, 1, 1))


# --------------------------------------------------------------------------- PiDNet plumbing


def test_no_adapter_is_the_prior():
    net = make(None)
    ref = PixelDiT(**tiny_backbone_kwargs())
    ref.load_state_dict(net.state_dict())
    x, t = torch.randn(1, 3, 32, 32), torch.rand(1)
    with torch.no_grad():
        assert torch.equal(net(x, t), ref.eval()(x, t))
    with pytest.raises(ValueError, match="no adapter"):
        net(x, t, latent=torch.randn(1, 4, 1, 1))
    assert list(net.adapter_parameters()) == []


def test_freeze_backbone_leaves_only_adapter_trainable():
    net = make(V15, freeze_backbone=True).train()
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("adapter.") for n in trainable)
    assert trainable == {n for n, _ in net.adapter.named_parameters(prefix="adapter")}
    n_adapter = sum(p.numel() for p in net.adapter_parameters())
    n_backbone = sum(p.numel() for p in net.backbone_parameters())
    assert n_adapter + n_backbone == sum(p.numel() for p in net.parameters())
    x = torch.randn(1, 3, 32, 32)
    net(x, torch.rand(1), latent=latent_for(net, 1, 32, 32)).square().mean().backward()
    assert all(p.grad is None for p in net.backbone_parameters())
    assert net.adapter.output_heads[0].weight.grad is not None
    with pytest.raises(ValueError, match="freeze_backbone"):
        make(None, freeze_backbone=True)


def test_features_and_early_exit():
    net = make(V1)
    perturb_heads(net)
    x, t, z = torch.randn(2, 3, 32, 64), torch.rand(2), torch.randn(2, 4, 1, 2)
    with torch.no_grad():
        v, ex = net(x, t, latent=z, return_extras=True, feature_blocks=(0, 2))
        none, ex2 = net(x, t, latent=z, feature_blocks=(2,), features_only=True)
    assert set(ex["features"]) == {0, 2} and ex["features"][2].shape == (2, 64, 2, 4)
    assert ex["aux_rgb"] is None and none is None
    assert torch.allclose(ex2["features"][2], ex["features"][2])
    with pytest.raises(ValueError, match="feature block"):
        net(x, t, feature_blocks=(4,))


def test_gate_stats():
    net = make(V15)
    stats = net.gate_stats()
    assert stats["gate/block0/alpha"] == pytest.approx(5.0) and "gate/pit/alpha" in stats
    with torch.no_grad():
        net(torch.randn(1, 3, 32, 32), torch.rand(1), latent=torch.randn(1, 4, 1, 1), sigma=torch.ones(1))
    stats = net.gate_stats()
    assert set(k for k in stats if k.endswith("/mean")) == {
        "gate/block0/mean",
        "gate/block2/mean",
        "gate/pit/mean",
    }
    assert stats["gate/block0/mean"] < 0.2  # sigma = 1 closes the gates


# --------------------------------------------------------------------------- paper sizes


def paper_adapter_params(**cfg):
    with torch.device("meta"):
        a = LatentAdapter(16, PAPER["hidden_size"], PAPER["patch_depth"], PAPER["patch_size"], 8, 4, **cfg)
    return sum(p.numel() for p in a.parameters())


def test_paper_adapter_param_counts():
    v1 = paper_adapter_params(width=512, gate="per_token_per_channel")
    v15_core = paper_adapter_params(width=1024, gate="per_token")
    v15 = paper_adapter_params(width=1024, gate="per_token", pit_injection=True, aux_rgb_head=True)
    print(f"\nadapter v1 (512, per-token-per-channel): {v1:,}")
    print(f"adapter v1.5 (1024, per-token): {v15_core:,}; with PiT injection + aux RGB head: {v15:,}")
    assert 50e6 <= v1 <= 70e6
    assert 85e6 <= v15_core <= 115e6 and 85e6 <= v15 <= 115e6


def test_paper_pidnet_builds_on_meta():
    with torch.device("meta"):
        net = PiDNet(adapter=functools.partial(LatentAdapter, width=512), latent_channels=16, **PAPER)
    n = sum(p.numel() for p in net.backbone_parameters())
    assert 1.17e9 <= n <= 1.43e9 and len(net.adapter.gate_modules) == 7
