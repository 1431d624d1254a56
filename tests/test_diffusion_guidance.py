"""Dual classifier-free guidance wrapper."""

import pytest
import torch

from pid.diffusion import DualCFG, dual_cfg, guidance_branches, sample_euler, teacher_timesteps


class Switchable:
    """A conditional 'denoiser' whose output depends on every input in a known way."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, text_on, latent_on, caption=None, latent=None, names=None):
        self.calls.append((x.shape[0], text_on.clone(), latent_on.clone()))
        assert t.shape == (x.shape[0],) and text_on.shape == latent_on.shape == (x.shape[0],)
        assert caption.shape[0] == latent.shape[0] == x.shape[0] and len(names) == x.shape[0]
        return self.reference(x, t, text_on, latent_on, caption, latent)

    @staticmethod
    def reference(x, t, text_on, latent_on, caption, latent):
        c = text_on.to(x.dtype).view(-1, 1, 1, 1)
        z = latent_on.to(x.dtype).view(-1, 1, 1, 1)
        return (
            x * (1 + 0.5 * c + 0.25 * z + 0.125 * c * z)
            + t.view(-1, 1, 1, 1)
            + c * caption.view(-1, 1, 1, 1)
            + z * latent.mean(dim=(1, 2, 3)).view(-1, 1, 1, 1) ** 2
        )


def _inputs(b=3):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, 2, 4, 4, generator=g)
    t = torch.rand(b, generator=g)
    cond = dict(
        caption=torch.randn(b, generator=g),
        latent=torch.randn(b, 4, 2, 2, generator=g),
        names=[f"s{i}" for i in range(b)],
    )
    return x, t, cond


def _branch(x, t, cond, text, lat):
    b = x.shape[0]
    text_on, latent_on = torch.full((b,), text), torch.full((b,), lat)
    return Switchable.reference(x, t, text_on, latent_on, cond["caption"], cond["latent"])


def test_weights_one_is_plain_conditional_single_forward():
    x, t, cond = _inputs()
    den = Switchable()
    out = DualCFG(den, 1.0, 1.0, cond=cond)(x, t)
    assert torch.equal(out, _branch(x, t, cond, True, True))
    assert len(den.calls) == 1 and den.calls[0][0] == 3
    assert den.calls[0][1].all() and den.calls[0][2].all()


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("wc,wz", [(4.0, 2.0), (3.0, 1.0), (1.0, 2.5), (2.0, 2.0), (0.0, 0.0)])
def test_matches_hand_computed_combination(wc, wz, batched):
    x, t, cond = _inputs()
    den = Switchable()
    out = DualCFG(den, text_scale=wc, latent_scale=wz, cond=cond, batched=batched)(x, t)
    v_cz = _branch(x, t, cond, True, True)
    v_0z = _branch(x, t, cond, False, True)
    v_00 = _branch(x, t, cond, False, False)
    expected = v_00 + wz * (v_0z - v_00) + wc * (v_cz - v_0z)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    n_branches = len(guidance_branches(wc, wz))
    assert n_branches == sum(c != 0 for c in (wc, wz - wc, 1 - wz))
    if batched:
        assert len(den.calls) == 1 and den.calls[0][0] == 3 * n_branches
    else:
        assert len(den.calls) == n_branches and all(c[0] == 3 for c in den.calls)


def test_latent_weight_one_is_pid_text_cfg_without_unconditional_branch():
    x, t, cond = _inputs()
    den = Switchable()
    out = DualCFG(den, text_scale=3.5, latent_scale=1.0, cond=cond)(x, t)
    v_cz = _branch(x, t, cond, True, True)
    v_0z = _branch(x, t, cond, False, True)
    torch.testing.assert_close(out, v_0z + 3.5 * (v_cz - v_0z))
    (_, text_on, latent_on), = den.calls
    assert latent_on.all()  # the latent stays on in every branch
    assert text_on.tolist() == [True] * 3 + [False] * 3


def test_functional_form_and_use_in_sampler():
    x, t, cond = _inputs()
    den = Switchable()
    a = dual_cfg(den, 2.0, 1.5, **cond)
    b = DualCFG(Switchable(), 2.0, 1.5, cond=cond, batched=False)
    torch.testing.assert_close(a(x, t), b(x, t), rtol=1e-6, atol=1e-6)
    out = sample_euler(a, x, teacher_timesteps(3))
    assert out.shape == x.shape and torch.isfinite(out).all()
