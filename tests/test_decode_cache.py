"""Decode computes the adapter's latent features once and reuses them at every sampler step."""

import pytest
import torch

import pid.sampling
from pid.diffusion import DualCFG
from pid.diffusion.schedules import student_timesteps
from pid.nn import PiDNet
from pid.sampling import decode_latent, pid_denoiser

from conftest import tiny_pid_net

T4 = student_timesteps([0.999, 0.866, 0.634, 0.342])
SAMPLERS = {
    "euler_teacher": dict(sampler="euler", num_steps=6),
    "sde_student": dict(sampler="sde", num_steps=4, timesteps=T4),
}


def make_net(adapter: str) -> PiDNet:
    """Tiny PiDNet with non-zero heads and output layer (latent and text both change the output)."""
    net = tiny_pid_net(adapter, sr_scale=2)
    with torch.no_grad():
        net.final_layer.linear.weight.normal_(0, 0.1)
        for head in [*net.adapter.output_heads, net.adapter.pit_head]:
            if head is not None:
                head.weight.normal_(0, 0.5)
    return net.eval()


def decode(net, cache: bool, monkeypatch, **kw):
    monkeypatch.setattr(pid.sampling, "pid_denoiser", lambda n: pid_denoiser(n, cache_latent_features=cache))
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 2, 3, generator=g)
    y = torch.randn(2, 5, 32, generator=g)
    return decode_latent(net, z, 0.3, sr_scale=2, latent_down=8, text=(y, None),
                         generator=torch.Generator().manual_seed(1), **kw)  # fmt: skip


@pytest.mark.parametrize("adapter", ["v1", "v1_5"])
@pytest.mark.parametrize(
    "cfg", [(1.0, 1.0), (3.0, 1.0), (3.0, 2.0)], ids=["no_cfg", "text_cfg", "text_latent_cfg"]
)
@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_adapter_trunk_runs_once_and_output_is_unchanged(sampler, cfg, adapter, monkeypatch):
    net = make_net(adapter)
    trunk_calls, net_calls = [], []
    net.adapter.latent_proj.register_forward_hook(lambda m, i, o: trunk_calls.append(i[0].shape[0]))
    # denoising calls only (the once-per-decode encode goes through forward too)
    net.register_forward_hook(
        lambda m, a, kw, o: None if kw.get("encode_only") else net_calls.append(a[0].shape[0]),
        with_kwargs=True)
    kw = dict(SAMPLERS[sampler], text_cfg=cfg[0], latent_cfg=cfg[1])
    steps = kw["num_steps"]
    branches = 1 + (cfg[0] != 1.0) + (cfg[1] != 1.0)

    cached = decode(net, True, monkeypatch, **kw)
    assert len(trunk_calls) == 1 and trunk_calls[0] == 2 * branches  # once per decode, all branches
    assert net_calls == [2 * branches] * steps  # one batched network call per step

    trunk_calls.clear()
    net_calls.clear()
    per_step = decode(net, False, monkeypatch, **kw)
    assert len(trunk_calls) == steps
    assert torch.equal(cached, per_step)


def test_latent_features_match_latent_argument():
    net = make_net("v1_5")
    x, t, sigma = torch.randn(3, 3, 32, 48), torch.rand(3), torch.tensor([0.0, 0.4, 1.0])
    z, keep = torch.randn(3, 4, 2, 3), torch.tensor([True, False, True])
    with torch.no_grad():
        ref = net(x, t, latent=z, sigma=sigma, latent_keep=keep)
        out = net(x, t, sigma=sigma, latent_features=net.encode_latent(z, (32, 48), keep=keep))
    assert torch.equal(ref, out)
    with pytest.raises(ValueError, match="not both"):
        net(x, t, latent=z, latent_features=net.encode_latent(z, (32, 48)))


def test_dualcfg_prepares_once_per_layout():
    seen = []

    class Den:
        def prepare(self, x_t, t, text_on, latent_on, c):
            seen.append(x_t.shape[0])
            return {"c": c * 2}

        def __call__(self, x_t, t, text_on, latent_on, c):
            return x_t * c.view(-1, 1) * (1 + text_on.float().view(-1, 1))

    model = DualCFG(Den(), text_scale=2.0, cond={"c": torch.ones(3)})
    x = torch.randn(3, 4)
    for _ in range(3):
        out = model(x, torch.zeros(3))
    assert seen == [6]
    torch.testing.assert_close(out, x * 2 * (1 + 2.0 * (2 - 1)))
