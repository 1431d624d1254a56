"""Context parallelism (pid.parallel.context) on 2 CPU processes (gloo), against one process.

The network: a tiny PiD (v1.5 adapter: PiT injection and auxiliary RGB head; captions with a padding mask)
split over a CP group of 2 gives the output, the discriminator features and, after the gradients are
averaged over the group as DDP/FSDP average them, every parameter gradient of the same network run whole in
one process, in float32 to 1e-5. A grid whose rows do not split is refused with the sizes that work.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

HERE = Path(__file__).resolve().parent
TOL = dict(atol=1e-5, rtol=1e-5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _inputs(seed: int = 0, b: int = 2, h: int = 64, w: int = 48):
    g = torch.Generator().manual_seed(seed)
    y_mask = torch.ones(b, 5, dtype=torch.bool)
    y_mask[0, 3:] = False  # a padded caption
    return {"x": torch.randn(b, 3, h, w, generator=g), "t": torch.rand(b, generator=g),
            "latent": torch.randn(b, 4, h // 32, w // 32, generator=g),
            "sigma": torch.tensor([0.0, 0.4])[:b], "latent_keep": torch.tensor([1.0, 0.0])[:b],
            "y": torch.randn(b, 5, 32, generator=g), "y_mask": y_mask,
            "weight": torch.randn(b, 3, h, w, generator=g)}


def _loss_and_grads(net, inp: dict, context=None):
    """A loss touching every output (velocity, aux RGB, block-1 features); its gradients by name."""
    net.zero_grad(set_to_none=True)
    kwargs = {k: inp[k] for k in ("latent", "sigma", "latent_keep", "y", "y_mask")}
    v, extras = net(inp["x"], inp["t"], return_extras=True, feature_blocks=(1,), context=context, **kwargs)
    loss = (v * inp["weight"]).square().mean() + extras["aux_rgb"].square().mean() \
        + extras["features"][1].pow(2).mean()
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in net.named_parameters() if p.grad is not None}
    return v.detach(), extras["features"][1].detach(), extras["aux_rgb"].detach(), loss.detach(), grads


def _decodes(net, context) -> dict:
    """Decodes of one latent batch with both guidances (text CFG 3 with a null caption, latent CFG 2) at
    σ = 0.3: the student's SDE sampler (fresh noise every step, from a generator) and the teacher's
    DPM-Solver++ (noise from the global generator); with ``context`` split over its group."""
    from pid.diffusion.schedules import student_timesteps
    from pid.sampling import decode_latent

    g = torch.Generator().manual_seed(11)
    latent = torch.randn(2, 4, 2, 1, generator=g)  # a 64 x 32 px image: 4 patch rows
    y = torch.randn(2, 5, 32, generator=g)
    common = dict(sr_scale=4, latent_down=8, text=(y, None), null_text=torch.zeros(1, 5, 32), text_cfg=3.0,
                  latent_cfg=2.0, context=context)
    torch.manual_seed(123 + (0 if context is None else context.rank))  # ranks differ: decode syncs them
    gen = torch.Generator().manual_seed(5 + (0 if context is None else context.rank))
    sde = decode_latent(net, latent, 0.3, num_steps=3, sampler="sde", generator=gen,
                        timesteps=student_timesteps(num_steps=3), **common)
    torch.manual_seed(7)
    dpm = decode_latent(net, latent, torch.tensor([0.0, 0.5]), num_steps=3, sampler="dpmpp_2m", **common)
    return {"sde": sde, "dpmpp_2m": dpm}


def _network_worker(rank: int, world: int, port: int, out: str) -> None:
    sys.path.insert(0, str(HERE))
    from conftest import tiny_pid_net

    from pid.parallel import context as cpmod

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        cp = cpmod.init_context_parallel(world, "cpu")
        net = tiny_pid_net("v1_5", seed=3).train()
        with torch.no_grad():  # the zero-initialised heads and output layer would hide half the gradients
            for p in net.parameters():
                p.add_(0.05 * torch.randn_like(p))
        inp = _inputs()
        seen = []  # image tokens each attention of the rank ran its queries on
        for m in (net.patch_blocks[0].attn, net.pixel_blocks[0].attn):
            m.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[1]))
        v, feat, aux, loss, grads = _loss_and_grads(net, inp, context=cp)
        tokens_cp, seen[:] = list(seen), []
        for g in grads.values():  # what DDP and FSDP do to every gradient: the mean over the ranks
            dist.all_reduce(g)
            g /= world
        uneven = None
        try:
            net(torch.randn(1, 3, 48, 32), torch.rand(1), context=cp)
        except ValueError as err:
            uneven = str(err)
        no_grad_v = None
        with torch.no_grad():
            no_grad_v = net(inp["x"], inp["t"], context=cp,
                            **{k: inp[k] for k in ("latent", "sigma", "latent_keep", "y", "y_mask")})
        decodes = _decodes(net.eval(), cp)
        if rank == 0:
            decodes = {k: (v, _decodes(net, None)[k]) for k, v in decodes.items()}
            seen.clear()
            ref = _loss_and_grads(net.train(), inp)
            tokens = {"cp": tokens_cp, "one": list(seen)}
            torch.save({"cp": (v, feat, aux, loss, grads), "ref": ref, "uneven": uneven,
                        "no_grad_v": no_grad_v, "decodes": decodes, "tokens": tokens,
                        "mesh": (cp.size, cp.rank, cp.dp_size, cp.dp_rank)},
                       Path(out) / "net.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def cp_results(tmp_path_factory) -> dict:
    """What the 2 CP ranks and one process computed (network and decodes), from one spawn."""
    out = tmp_path_factory.mktemp("cp")
    mp.start_processes(_network_worker, args=(2, free_port(), str(out)), nprocs=2, start_method="spawn")
    return torch.load(out / "net.pt", weights_only=False)


def test_network_forward_and_backward_cp2_equal_one_process(cp_results):
    got = cp_results
    assert got["mesh"] == (2, 0, 1, 0)
    # a 64 x 48 image: 4 x 3 patches; each CP rank ran its 2 rows (6 tokens) in the MM-DiT and PiT attention
    assert got["tokens"] == {"cp": [6, 6], "one": [12, 12]}
    (v, feat, aux, loss, grads), (rv, rfeat, raux, rloss, rgrads) = got["cp"], got["ref"]
    torch.testing.assert_close(v, rv, **TOL)
    torch.testing.assert_close(got["no_grad_v"], rv, **TOL)
    torch.testing.assert_close(feat, rfeat, **TOL)
    torch.testing.assert_close(aux, raux, **TOL)
    torch.testing.assert_close(loss, rloss, **TOL)
    assert grads.keys() == rgrads.keys() and len(grads) > 50
    worst = max(float((grads[n] - rgrads[n]).abs().max()) for n in grads)
    print(f"CP=2 vs CP=1: max |Δv| {float((v - rv).abs().max()):.2e}, max |Δgrad| {worst:.2e}")
    for n, g in rgrads.items():
        torch.testing.assert_close(grads[n], g, **TOL, msg=n)
    assert any(n.startswith("adapter.") for n in grads) and any("y_embedder" in n for n in grads)
    assert "3 patch rows" in got["uneven"] and "sizes that work: 1, 3" in got["uneven"]


def test_split_problem_names_working_sizes():
    from pid.parallel.context import split_problem

    assert split_problem(8, 4) is None
    msg = split_problem(6, 4, patch_size=16)
    assert "sizes that work: 1, 2, 3, 6" in msg and "multiples of 64 px" in msg



def test_decode_cp2_equals_one_process(cp_results):
    for name, (cp, ref) in cp_results["decodes"].items():
        print(f"decode {name}: CP=2 vs one process max |Δ| {float((cp - ref).abs().max()):.2e}")
        torch.testing.assert_close(cp, ref, **TOL, msg=name)


def test_decode_cli_refuses_a_wrong_process_count(tmp_path):
    from pid.parallel.context import init_from_environment

    with pytest.raises(ValueError, match="torchrun --nproc_per_node 2"):
        init_from_environment(2, "cpu")  # one process, no torchrun


@pytest.mark.parametrize("overrides,message", [
    (["trainer=ddp", "trainer.devices=2", "trainer.context_parallel=3"],
     "trainer.context_parallel=3 must divide the world size trainer.devices × trainer.num_nodes = 2 × 1 = 2; "
     "sizes that work: 1, 2"),
    (["trainer=cpu", "trainer.context_parallel=2"], "use trainer=ddp, trainer=fsdp or trainer=ddp_multinode"),
    (["trainer=ddp", "trainer.devices=4", "trainer.context_parallel=4", "data.crop_size=48"],
     "data.crop_size=48 with trainer.context_parallel=4: 6 patch rows (48 px) do not split evenly over 4 "
     "context-parallel ranks; sizes that work: 1, 2, 3, 6"),
    (["trainer=ddp", "trainer.context_parallel=0"], "trainer.context_parallel=0 must be a whole number >= 1"),
])
def test_config_time_checks_name_the_key_and_what_works(tmp_path, overrides, message):
    sys.path.insert(0, str(HERE))
    from conftest import compose_train, tiny_train_overrides

    from pid.preflight import check_config
    from pid.utils.errors import PiDConfigError

    cfg = compose_train(tiny_train_overrides(tmp_path, tmp_path, *overrides))
    with pytest.raises(PiDConfigError) as err:
        check_config(cfg)
    assert message in str(err.value)


def test_config_time_check_passes_a_splittable_run(tmp_path):
    sys.path.insert(0, str(HERE))
    from conftest import compose_train, tiny_train_overrides

    from pid.preflight import check_config

    cfg = compose_train(tiny_train_overrides(tmp_path, tmp_path, "trainer=fsdp", "trainer.devices=4",
                                             "trainer.context_parallel=2"))
    check_config(cfg)
    assert cfg.trainer.context_parallel == 2


def test_decode_cli_refuses_a_process_count_below_one(tmp_path):
    from pid.decode import main
    from pid.utils.errors import PiDConfigError

    with pytest.raises(PiDConfigError, match="--context-parallel 0: a number of processes >= 1"):
        main(["--ckpt", str(tmp_path / "none.safetensors"), "--latent", str(tmp_path / "z.pt"),
              "--out", str(tmp_path / "x.png"), "--context-parallel", "0"])
