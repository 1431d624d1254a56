"""Tiled decoding (pid.tiling): a tile that covers the image is the whole decode, tiles stay close to it,
tiles see their global RoPE positions and the whole decode's latent features, bad tiles are refused."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_pid_net
from pid.nn.layers import rope_2d
from pid.sampling import decode_latent
from pid.tiling import TiledDenoiser, plan_tiles, tile_starts

KW = dict(sr_scale=4, latent_down=8, num_steps=2, sampler="euler", latent_cfg=2.0)


@pytest.fixture(scope="module")
def net():
    """The tiny v1.5 PiD network with non-zero output heads and output layer (a fresh one predicts v = 0)."""
    net = tiny_pid_net("v1_5", latent_channels=4)
    torch.manual_seed(1)
    for m in [*net.adapter.output_heads, net.adapter.pit_head, net.final_layer.linear]:
        torch.nn.init.normal_(m.weight, std=0.05)
    return net


def _decode(net, z, **kw):
    return decode_latent(net, z, 0.2, generator=torch.Generator().manual_seed(0), **KW, **kw)


def test_a_tile_covering_the_image_is_the_whole_decode_exactly(net):
    z = torch.randn(1, 4, 2, 3)  # 64 × 96 px
    whole = _decode(net, z)
    assert torch.equal(_decode(net, z, tile=96), whole)
    assert torch.equal(_decode(net, z, tile=128, tile_overlap=32), whole)


def test_one_tile_through_the_tiled_path_equals_the_whole_forward(net):
    """The tiled denoiser with a single tile (global window = whole grid) reproduces the network's output:
    the trunk/heads split of the adapter and the RoPE window change nothing by themselves."""
    from pid.sampling import PiDDenoiser

    x = torch.randn(2, 3, 64, 64)
    t = torch.full((2,), 0.7)
    on = torch.tensor([True, False])
    z = torch.randn(2, 4, 2, 2)
    cond = dict(latent=z, sigma=torch.tensor([0.1, 0.4]))
    ref = PiDDenoiser(net)
    want = ref(x, t, on, on, **ref.prepare(x, t, on, on, **cond))
    layout = plan_tiles((64, 64), net.patch_size, 64)
    tiled = TiledDenoiser(net, layout)
    got = tiled(x, t, on, on, **tiled.prepare(x, t, on, on, **cond))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_tiles_stay_close_to_the_whole_decode(net):
    z = torch.randn(1, 4, 2, 4)  # 64 × 128 px: 3 overlapping tiles of 64 px across
    whole = _decode(net, z)
    tiled = _decode(net, z, tile=64, tile_overlap=32)
    assert tiled.shape == whole.shape
    diff = (tiled - whole).abs()
    # measured: mean |diff| 0.024 against mean |x| 0.64 (3.8 %); the bound leaves room for other seeds
    assert diff.mean() < 0.25 * whole.abs().mean(), float(diff.mean())
    assert not torch.equal(tiled, whole)  # the tiled path ran


def test_global_rope_positions_matter(net, monkeypatch):
    """Tiles told they are small images (local RoPE positions) decode further from the whole image."""
    z = torch.randn(1, 4, 2, 4)
    whole = _decode(net, z)
    good = (_decode(net, z, tile=64, tile_overlap=32) - whole).abs().mean()
    forward = type(net).forward

    def local_positions(self, *args, rope_window=None, **kwargs):
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(type(net), "forward", local_positions)
    bad = (_decode(net, z, tile=64, tile_overlap=32) - whole).abs().mean()
    assert good < bad, (float(good), float(bad))


def test_rope_window_is_a_slice_of_the_whole_grid():
    full_cos, full_sin = rope_2d(16, 6, 8, ref_grid=(4, 4))
    cos, sin = rope_2d(16, 6, 8, ref_grid=(4, 4), window=(2, 3, 3, 4))
    idx = torch.tensor([r * 8 + c for r in range(2, 5) for c in range(3, 7)])
    assert torch.equal(cos, full_cos[idx]) and torch.equal(sin, full_sin[idx])
    with pytest.raises(ValueError, match="not inside"):
        rope_2d(16, 6, 8, window=(4, 0, 3, 8))


def test_tiles_cover_the_image_on_the_patch_grid():
    for length, tile, overlap in [(128, 64, 16), (200, 64, 16), (64, 64, 0), (96, 48, 8)]:
        starts = tile_starts(length, tile, overlap, 8)
        assert starts[0] == 0 and starts[-1] + tile == length
        assert all(s % 8 == 0 for s in starts)
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))
    layout = plan_tiles((64, 128), 16, 64, 32)
    w = layout.weights()
    total = torch.zeros(64, 128)
    for weight, (top, left) in zip(w, layout.starts):
        total[top:top + 64, left:left + 64] += weight
    assert (total > 0).all() and layout.tiled and not plan_tiles((64, 64), 16, 64).tiled


@pytest.mark.parametrize("tile, overlap, match", [
    (50, None, r"tile=50 is not a positive multiple of the network's patch size 16.*tile=48 or tile=64"),
    (8, None, "multiple of the network's patch size 16"),
    (64.0, None, "integer multiple"),
    (True, None, "integer multiple"),
    (64, 8, r"tile_overlap=8 must be a multiple of the patch size 16"),
    (64, 64, r"in \[0, tile=64\)"),
    (64, -16, "tile_overlap=-16"),
])
def test_bad_tiles_are_refused(net, tile, overlap, match):
    with pytest.raises(ValueError, match=match):
        _decode(net, torch.randn(1, 4, 2, 4), tile=tile, tile_overlap=overlap)


def test_the_decoder_api_takes_tile(net):
    from pid.api import PiDDecoder
    from pid.latents.geometry import LatentGeometry

    decoder = PiDDecoder(net, LatentGeometry(channels=4, down_factor=8), sr_scale=4,
                         sampling={"sampler": "euler", "num_steps": 1})
    z = torch.randn(1, 4, 2, 4)
    whole = decoder.decode(z, generator=torch.Generator().manual_seed(0))
    assert torch.equal(decoder.decode(z, generator=torch.Generator().manual_seed(0), tile=128), whole)
    tiled = decoder.decode(z, generator=torch.Generator().manual_seed(0), tile=64, tile_overlap=16)
    assert tiled.shape == whole.shape and not torch.equal(tiled, whole)
    with pytest.raises(ValueError, match="tile=60"):
        decoder.decode(z, tile=60)
