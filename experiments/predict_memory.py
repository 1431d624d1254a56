"""Paper-size GPU memory predicted on a CPU: PyTorch's ``MemTracker`` on fake tensors (no GPU, no weights).

    python -m experiments.predict_memory          # or: make memory → benchmarks/memory.{md,json}

Every network is built at its paper size on the meta device and materialised as fake tensors
(``FakeTensorMode``: shapes, dtypes and storages, no data), so a 1.3B-parameter step costs seconds and no
memory. ``torch.distributed._tools.mem_tracker.MemTracker`` follows every storage the step creates and
frees and reports the peak, split into parameters, gradients, activations and temporaries. Attention runs
through ``scaled_dot_product_attention``'s flash kernel (no mask), which keeps the output and the
log-sum-exp only, as flash / cuDNN attention do on a GPU.

What is measured and what is derived:

- decode: the 4-step student decode (``pid.sampling.decode_latent``, CFG 1, caption states present, bf16
  weights, bf16 autocast), batch 1, measured whole. The text encoder (Gemma-2-2B-it) and the VAE are
  separate models: their parameters and one forward each are measured the same way and listed apart;
  "+ text encoder" adds Gemma's bf16 weights, resident during the decode.
- tiled decode: measured through ``decode_latent(..., tile=, tile_overlap=)`` over one sampler step (every
  step allocates the same; the tracker is slow on many tiles) when that argument exists, else the rows say
  it is not available.
- training, one device's share under FSDP over ``--world`` devices: the activations and temporaries of one
  step (forward and backward, bf16 compute, with or without activation checkpointing of every MM-DiT / PiT
  block as ``trainer=fsdp`` does; the step starts from the latent and caption states, whose encoders are
  listed apart) are measured; the sharded states are derived from the parameter counts
  (fp32 master weights 4 B, fp32 gradients 4 B and AdamW moments 8 B per trainable parameter, 4 B per
  frozen one, divided by the world size), and so is FSDP's working set (one network's unsharded non-block
  parameters plus two blocks, bf16, and those blocks' unsharded bf16 gradients).
- context parallelism (CP 2, 4): pid's own (``pid.parallel.context``) runs as rank 0 of its group on
  PyTorch's fake process group: the all-gathered keys/values, the whole-image adapter and the gathered output
  are in the measurement like everything else.
Not included anywhere: the CUDA context (≈0.5 GB), allocator fragmentation and caching, NCCL buffers.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import platform
import subprocess
import time
from pathlib import Path
from unittest import mock

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
GIB = 2**30
#: The paper's decode memory (PiD §5, H100/RTX 5090, 4-step compiled student, batch 1), GB as printed.
PAPER_DECODE_GB = {2048: 13.0, 4096: 22.5}
#: Public architecture of the separately listed models (their config.json values).
GEMMA2_2B = dict(hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
                 num_key_value_heads=4, head_dim=256, vocab_size=256000)
FLUX1_VAE = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                 up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512],
                 layers_per_block=2, latent_channels=16, norm_num_groups=32, use_quant_conv=False,
                 use_post_quant_conv=False)
TEXT_TOKENS = 300


# ---------------------------------------------------------------------------------------------- tracking
def _tracker_class():
    from torch.distributed._tools.mem_tracker import _TOTAL_KEY, MemTracker, _MemRefType

    working_keys = {_MemRefType.ACT, _MemRefType.TEMP, _MemRefType.OTH}

    class Tracker(MemTracker):
        """MemTracker that accepts frozen parameters (it hooks every parameter's gradient, which a tensor
        without requires_grad refuses) and also keeps the peak of the step's own memory: activations,
        temporaries and inputs, without parameters and gradients (what sharding does not divide)."""

        def __init__(self):
            super().__init__()
            self.peak_working = 0

        def _track_module_params_and_buffers(self, module, install_grad_hooks=True):
            out = super()._track_module_params_and_buffers(module, install_grad_hooks=False)
            if install_grad_hooks:
                for p in module.parameters():
                    if p.requires_grad and self._param_to_grad_hook_handles.get(p) is None:
                        def hook(g):
                            self._update_and_maybe_create_winfos(g, _MemRefType.GRAD)
                        self._param_to_grad_hook_handles[p] = (
                            p.register_hook(hook),
                            p.register_post_accumulate_grad_hook(lambda q: hook(q.grad)))
            return out

        def _update_peak_stats(self, peak_state):
            # The device-wide peaks only: MemTracker's per-module peaks (a pass over every module at every
            # operation) cost minutes per paper-size step and are not used here.
            for dev, snap in self._curr_mem_snap.items():
                if self._peak_mem.get(dev, 0) < snap[_TOTAL_KEY]:
                    self._peak_mem[dev] = snap[_TOTAL_KEY]
                    self._peak_mem_snap[dev] = dict(snap)
                own = sum(v for k, v in snap.items() if k in working_keys)
                self.peak_working = max(self.peak_working, own)

    return Tracker


class _Step(nn.Module):
    """One call that holds the step's modules: MemTracker refuses a top-level module called twice (a sampler's
    steps, DMD2's several passes), and allows a child called several times within one parent call."""

    def __init__(self, fn, modules):
        super().__init__()
        self.fn = fn
        self.parts = nn.ModuleList(modules)

    def forward(self):
        return self.fn()


class Fake:
    """One FakeTensorMode for the whole run; modules are built on meta and materialised as fake tensors."""

    def __init__(self):
        from torch._subclasses.fake_tensor import FakeTensorMode

        self.mode = FakeTensorMode(allow_non_fake_inputs=True)
        self.tracker_cls = _tracker_class()

    def module(self, build, dtype: torch.dtype = torch.bfloat16, meta: bool = True) -> nn.Module:
        """``build()`` on the meta device (``meta=False``: it places its big parts there) → fake tensors."""
        with torch.device("meta") if meta else contextlib.nullcontext():
            m = build()
        m = m.to(dtype)
        with self.mode:
            m = m.to_empty(device="cpu")
        if hasattr(m, "_device"):  # a LightningModule's own record of its device (to_empty leaves it meta)
            m._device = torch.device("cpu")
        return m

    def measure(self, fn, *modules: nn.Module) -> dict:
        """Run ``fn()`` under the tracker (fake tensors), and the backward of the loss it returns (if any):
        peak total and its parts, and the peak of the step's own memory (activations + temporaries), bytes."""
        tracker = self.tracker_cls()
        for m in modules:
            tracker.track_external(m)
        step = _Step(fn, modules)
        t0 = time.perf_counter()
        with self.mode, tracker:
            loss = step()
            if loss is not None:  # outside the step's call: the module tracker wants forward, then backward
                loss.backward()
        snap = tracker.get_tracker_snapshot("peak")
        dev = snap.get(torch.device("cpu"), next(iter(snap.values()), {}))
        parts = {str(getattr(k, "value", k)): int(v) for k, v in dev.items()}
        return {"peak": parts.pop("Total", 0), "parts": parts, "working": int(tracker.peak_working),
                "tracker_s": round(time.perf_counter() - t0, 1)}


# ---------------------------------------------------------------------------------------------- networks
def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


def release_net(name: str):
    from pid.weights.release import load_release

    rel = load_release(name)
    return rel, rel.build_net


def tiny_release_net(name: str):
    """The release's network at the tiny size of conf/model/net/tiny.yaml (for the CPU test)."""
    from hydra.utils import instantiate

    from pid.weights.release import load_release

    rel = load_release(name)
    tiny = compose(["model/net=tiny"]).model.net
    cfg = dict(rel.net)
    for key in ("hidden_size", "num_groups", "pixel_hidden_size", "pixel_attn_hidden_size",
                "pixel_num_groups", "patch_depth", "pixel_depth", "txt_embed_dim", "txt_max_length"):
        if key in tiny:
            cfg[key] = tiny[key]
    cfg["adapter"] = {**dict(rel.net["adapter"]), "width": 64}
    return rel, lambda: instantiate(cfg)


def net_count(module: nn.Module) -> dict:
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    total = sum(p.numel() for p in module.parameters())
    return {"params": total, "trainable": trainable}


def unit_sizes(net: nn.Module) -> dict:
    """Parameters of the FSDP units of ``trainer=fsdp``: each MM-DiT / PiT block, and the rest of the net."""
    from pid.nn.blocks import MMDiTBlock, PiTBlock

    blocks = [m for m in net.modules() if isinstance(m, (MMDiTBlock, PiTBlock))]
    in_blocks = {id(p) for b in blocks for p in b.parameters()}
    rest = sum(p.numel() for p in net.parameters() if id(p) not in in_blocks)
    largest = max(blocks, key=lambda b: sum(p.numel() for p in b.parameters()))
    return {"rest": rest, "block": sum(p.numel() for p in largest.parameters()),
            "block_trainable": sum(p.numel() for p in largest.parameters() if p.requires_grad)}


def checkpoint_blocks(module: nn.Module) -> None:
    """Activation checkpointing of every MM-DiT / PiT block, as ``trainer=fsdp`` applies it."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

    from pid.nn.blocks import MMDiTBlock, PiTBlock

    apply_activation_checkpointing(module, check_fn=lambda m: isinstance(m, (MMDiTBlock, PiTBlock)))


# ---------------------------------------------------------------------------------------------- decode
def tiled_available() -> bool:
    from pid.sampling import decode_latent

    return "tile" in inspect.signature(decode_latent).parameters


def decode_row(fake: Fake, rel, build, size: int, tile: int | None = None, overlap: int = 0,
               steps: int | None = None) -> dict:
    """Peak of a student decode at ``size``² (``steps``: fewer sampler steps than the release's; every step
    allocates the same, so the peak is that of the whole decode)."""
    from pid.diffusion.schedules import student_timesteps
    from pid.sampling import decode_latent

    net = fake.module(build).eval()
    sr, down = int(rel.sr_scale), int(rel.build_latent(geometry_only=True).down_factor)
    channels = int(net.adapter.latent_channels)
    t_list = rel.sampling.get("t_list") or [0.999, 0.866, 0.634, 0.342]
    # a real tensor: the sampler reads its values
    timesteps = student_timesteps(t_list, steps or int(rel.sampling.get("num_steps", 4)))
    extra = {} if tile is None else {"tile": tile, "tile_overlap": overlap}

    def run():
        z = torch.randn(1, channels, size // (sr * down), size // (sr * down))
        y = torch.zeros(1, TEXT_TOKENS, net.txt_embed_dim)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            decode_latent(net, z, 0.0, sr_scale=sr, latent_down=down, num_steps=len(timesteps) - 1,
                          sampler="sde", text=(y, None), timesteps=timesteps, **extra)

    m = fake.measure(run, net)
    return {"size": size, "steps": len(timesteps) - 1, **net_count(net), **m}


def text_encoder_row(fake: Fake) -> dict:
    import transformers

    cfg = transformers.Gemma2Config(**GEMMA2_2B, attn_implementation="eager")
    model = fake.module(lambda: transformers.Gemma2Model(cfg)).eval()

    def run():
        with torch.no_grad():
            model(input_ids=torch.zeros(1, TEXT_TOKENS, dtype=torch.long),
                  attention_mask=torch.ones(1, TEXT_TOKENS, dtype=torch.long))

    return {"model": "Gemma-2-2B-it (text encoder)", "what": f"encode {TEXT_TOKENS} tokens",
            **net_count(model), **fake.measure(run, model)}


def vae_rows(fake: Fake, sizes: list[int]) -> list[dict]:
    import diffusers

    vae = fake.module(lambda: diffusers.AutoencoderKL(**FLUX1_VAE)).eval()
    rows = []
    for size in sizes:
        def run(size=size):
            with torch.no_grad():
                vae.encode(torch.zeros(1, 3, size, size, dtype=torch.bfloat16)).latent_dist.mean

        rows.append({"model": "FLUX.1 VAE encoder", "what": f"encode the {size}² low-res image",
                     **net_count(vae.encoder), **fake.measure(run, vae.encoder)})
    return rows


# ---------------------------------------------------------------------------------------------- training
def teacher_module(fake: Fake, variant: str, tiny: bool, ac: bool):
    """PiDModule at paper size: v1 = pid_vae_4x (backbone trained jointly), v1.5 = the v1.5 teacher preset
    (adapter only)."""
    from hydra.utils import instantiate

    from pid.latents.geometry import LatentGeometry

    over = ["experiment=pid_vae_4x", "text=none"]
    if variant == "v1.5":
        over += ["model/net/adapter=v1_5", "model.net.freeze_backbone=true", "model.net.rope_ref_h=2048",
                 "model.net.rope_ref_w=2048"]
    if tiny:
        over += ["model/net=tiny"] + (["model.net.adapter.width=64"] if variant == "v1.5" else
                                      ["model/net/adapter=tiny"])
    cfg = compose(over)
    latent = LatentGeometry(int(cfg.latent.channels), int(cfg.latent.down_factor))

    def build():
        return instantiate(cfg.model, latent=latent, text_encoder=None, _convert_="all")

    module = fake.module(build).train()
    if ac:
        checkpoint_blocks(module.net)
    return module, [("net", module.net)]


def teacher_step(module, size: int, batch: int, width_div: int = 1, context=None):
    from pid.diffusion import flow

    net = module.net
    sr, down = module.sr_scale, int(module.latent.down_factor)
    w = size // width_div

    def run():
        hq = torch.rand(batch, 3, size, w) * 2 - 1
        z_shape = (batch, net.adapter.latent_channels, size // (sr * down), w // (sr * down))
        cond = {"latent": torch.randn(z_shape), "sigma": torch.rand(batch) * 0.8,
                "latent_keep": torch.ones(batch, dtype=torch.bool),
                "y": torch.randn(batch, TEXT_TOKENS, net.txt_embed_dim), "y_mask": None,
                "lq": torch.rand(batch, 3, size // sr, w // sr), "context": context}
        t = flow.sample_training_t(batch, size, size, device="cpu")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return module.diffusion_loss(hq, cond, t, torch.randn_like(hq))["loss"]

    return run


def dmd2_module(fake: Fake, tiny: bool, ac: bool):
    """DMD2Module at paper size (pid_vae_4x_dmd2: student, fake score, frozen teacher, discriminator); the
    teacher's weights are not loaded (fake tensors carry none)."""
    from hydra.utils import instantiate

    from pid.latents.geometry import LatentGeometry
    from pid.lit import distill

    over = ["experiment=pid_vae_4x_dmd2", "text=none", "model.teacher_ckpt=unused"]
    if tiny:
        over += ["model/net=tiny", "model/net/adapter=tiny", "model.discriminator.feature_blocks=[1]"]
    cfg = compose(over)
    latent = LatentGeometry(int(cfg.latent.channels), int(cfg.latent.down_factor))

    def build():
        with torch.device("meta"):  # the three networks; the module's own small tensors are built on the CPU
            net = instantiate(cfg.model.net)
        with mock.patch.object(distill, "resolve_teacher_path", lambda value, *a, **k: Path(str(value))), \
                mock.patch.object(distill.DMD2Module, "_load_teacher", lambda self, *a, **k: {}):
            return instantiate(cfg.model, net=net, latent=latent, text_encoder=None, _convert_="all")

    module = fake.module(build, meta=False).train()
    if ac:
        for net in (module.net, module.fake_score, module.teacher):
            checkpoint_blocks(net)
    return module, [("student", module.net), ("fake_score", module.fake_score), ("teacher", module.teacher),
                    ("discriminator", module.discriminator)]


def dmd2_step(module, size: int, batch: int, phase: str, width_div: int = 1, context=None):
    net = module.net
    sr, down = module.sr_scale, int(module.latent.down_factor)
    w = size // width_div

    def run():
        gen, shared = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
        hq = torch.rand(batch, 3, size, w) * 2 - 1
        z_shape = (batch, net.adapter.latent_channels, size // (sr * down), w // (sr * down))
        cond = {"latent": torch.randn(z_shape), "sigma": torch.rand(batch) * 0.8,
                "y": torch.randn(batch, TEXT_TOKENS, net.txt_embed_dim),
                "y_mask": None, "context": context}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if phase == "student":
                return module.student_losses(hq, cond, gen, shared, iteration=10 * module.student_every)[0]
            return module.critic_losses(hq, cond, gen, shared)[0]

    return run


@contextlib.contextmanager
def fake_context_parallel(size: int):
    """pid's context parallelism over ``size`` ranks as rank 0 sees it, on PyTorch's fake process group (its
    collectives return buffers of the right shapes; with fake tensors nothing is computed). None for 1."""
    if size == 1:
        yield None
        return
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from pid.parallel import context as cp_mod

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=size)
    try:
        yield cp_mod.init_context_parallel(size, "cpu")
    finally:
        cp_mod.reset()
        dist.destroy_process_group()


def fsdp_share(nets: list[tuple[str, nn.Module]], world: int) -> dict:
    """Per-device bytes of the sharded states and of FSDP's unsharded working set (derived)."""
    states = 0
    working = 0
    for _, net in nets:
        c = net_count(net)
        states += (c["trainable"] * 16 + (c["params"] - c["trainable"]) * 4) / world
        if any(True for _ in net.modules() if type(_).__name__ in ("MMDiTBlock", "PiTBlock")):
            u = unit_sizes(net)
            working = max(working, (u["rest"] + 2 * u["block"]) * 2 + 2 * u["block_trainable"] * 2)
        else:
            working = max(working, c["params"] * 2 + c["trainable"] * 2)
    return {"states": int(states), "working_set": int(working)}


# ---------------------------------------------------------------------------------------------- runner
def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
        return done.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def train_rows(fake: Fake, args, log) -> list[dict]:
    rows = []
    cp_list = [1] + [c for c in args.cp if c > 1]
    for kind in args.train:
        for ac in (False, True):
            if kind in ("v1", "v1.5"):
                module, nets = teacher_module(fake, kind, args.tiny, ac)
                batches = args.batches
            else:
                module, nets = dmd2_module(fake, args.tiny, ac)
                batches = [1]
            share = fsdp_share(nets, args.world)
            for size in args.train_sizes:
                for batch in batches:
                    for cp in cp_list:
                        if cp > 1 and batch > 1:
                            continue
                        with fake_context_parallel(cp) as context:
                            if kind == "dmd2":
                                parts = {ph: fake.measure(dmd2_step(module, size, batch, ph, context=context),
                                                          module) for ph in ("critic", "student")}
                                phase = max(parts, key=lambda k: parts[k]["working"])
                                m = parts[phase]
                            else:
                                m = fake.measure(teacher_step(module, size, batch, context=context), module)
                                phase = "step"
                        act = m["working"]
                        total = share["states"] + share["working_set"] + act
                        row = {"kind": kind, "size": size, "batch": batch, "ac": ac, "cp": cp,
                               "world": args.world, "phase": phase, "states": share["states"],
                               "working_set": share["working_set"], "activations": act,
                               "per_device": total, "tracker_s": m["tracker_s"],
                               "cp_source": ("one device" if cp == 1 else
                                             "pid.parallel.context, rank 0 on PyTorch's fake process group"),
                               "nets": {n: net_count(x) for n, x in nets}}
                        if kind == "dmd2":
                            row["phases"] = {k: v["working"] for k, v in parts.items()}
                        rows.append(row)
                        log(f"train {kind:5s} {size}² b{batch} AC={'on ' if ac else 'off'} CP{cp}: "
                            f"{total / GIB:6.1f} GiB/device (states {share['states'] / GIB:.1f}, "
                            "FSDP working "
                            f"set {share['working_set'] / GIB:.1f}, activations {act / GIB:.1f})")
            del module, nets
    return rows


def gb(x: float) -> str:
    return f"{x / GIB:.1f}"


def write_outputs(out: Path, payload: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory.json").write_text(json.dumps(payload, indent=1))
    (out / "memory.md").write_text(render_md(payload))


def render_md(p: dict) -> str:
    scale = "paper size" if not p["tiny"] else "TINY networks (test run)"
    L = [f"# Predicted GPU memory ({scale}, bf16) — MemTracker on fake tensors, CPU", "",
         f"`python -m experiments.predict_memory` at {p['commit'] or 'an uncommitted tree'}"
         + (f" with {p['dirty']} tracked file(s) changed" if p.get("dirty") else "") + f" ({p['torch']}, "
         f"{p['seconds']:.0f} s on {p['machine']}). GiB = 2³⁰ bytes. Measured: everything a step "
         "allocates "
         "(PyTorch's MemTracker following fake tensors), context parallelism included; derived: FSDP's "
         "shards and working set. Not included: CUDA context (≈0.5 GB), allocator caching and fragmentation, "
         "NCCL buffers.", "", "## Decode: the 4-step student, batch 1, eager", "",
         "| preset | output | PiD params | PiD peak | + text encoder resident | paper | ratio |",
         "|---|---|---:|---:|---:|---:|---:|"]
    te = p["components"][0]["params_bytes"] if p["components"] else 0
    for r in p["decode"]:
        paper = PAPER_DECODE_GB.get(r["size"]) if not p["tiny"] else None
        with_te = r["peak"] + te
        ratio = f"{with_te / GIB / paper:.2f}×" if paper else "—"
        L.append(f"| {r['preset']} | {r['size']}² | {gb(r['parts'].get('Parameter', 0))} GiB "
                 f"| {gb(r['peak'])} GiB "
                 f"| {gb(with_te)} GiB | {f'{paper:.1f} GB' if paper else '—'} | {ratio} |")
    L += ["", "Ratio: ours with the text encoder resident, in GiB, over the paper's figure. "
          + p["decode_note"], ""]
    L += ["## Tiled decode", ""]
    if p["tiled"]:
        L += ["`decode(..., tile=, tile_overlap=)`, measured over one sampler step (every step allocates the "
              "same), beside the whole decode of the same preset and size.", "",
              "| preset | output | tile | overlap | tiled peak | whole-image peak |",
              "|---|---|---:|---:|---:|---:|"]
        whole = {(r["preset"], r["size"]): r["peak"] for r in p["decode"]}
        L += [f"| {r['preset']} | {r['size']}² | {r['tile']} | {r['tile_overlap']} | {gb(r['peak'])} GiB "
              f"| {gb(whole[(r['preset'], r['size'])])} GiB |" for r in p["tiled"]]
        tile = p["tiled"][0]["tile"]
        covered = ", ".join(f"{s}²" for s in sorted({r["size"] for r in p["decode"]}) if s <= tile)
        if covered:
            L += ["", f"At {covered} one tile covers the image: the tiled decode is the whole decode."]
    else:
        L.append(f"Tiled decode not available: {p['tiled_note']}")
    L += ["", "## Separate models (bf16)", "", "| model | what | params | params GiB | peak GiB |",
          "|---|---|---:|---:|---:|"]
    for r in p["components"]:
        L.append(f"| {r['model']} | {r['what']} | {r['params'] / 1e9:.3f} B | {gb(r['params_bytes'])} "
                 f"| {gb(r['peak'])} |")
    L += ["", f"## Training: one device's share, FSDP over {p['world']} devices, bf16 compute, AdamW", "",
          "States = fp32 weights, gradients and AdamW moments of the trainable parameters and fp32 frozen "
          f"ones, ÷ {p['world']} (derived); working set = FSDP's unsharded bf16 parameters and gradients "
          "(derived); "
          "activations measured. v1 = backbone trained jointly (pid_vae_4x), v1.5 = adapter only, dmd2 = "
          "pid_vae_4x_dmd2 (student, fake score, frozen teacher, discriminator; the larger of its two "
          "phases). AC = activation checkpointing of every MM-DiT / PiT block.", "",
          "| run | size | batch | AC | CP | states | working set | activations | per device |",
          "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in p["train"]:
        L.append(f"| {r['kind']} | {r['size']}² | {r['batch']} | {'on' if r['ac'] else 'off'} | {r['cp']} "
                 f"| {gb(r['states'])} | {gb(r['working_set'])} | {gb(r['activations'])} "
                 f"| **{gb(r['per_device'])}** |")
    L += ["", p["cp_note"], ""]
    L += fit_table(p)
    return "\n".join(L) + "\n"


#: Cards the "will it fit" table names, by their memory in GB (10⁹ B) as sold.
CARDS_GB = (16, 24, 48, 80)


def fit_table(p: dict) -> list[str]:
    """The short table the README shows: decode peaks with the text encoder resident, and per-device training
    memory at batch 1 with activation checkpointing, per CP degree; the smallest listed card each fits."""
    def card(nbytes: float) -> str:
        fits = [c for c in CARDS_GB if nbytes <= c * 1e9]
        return f"{fits[0]} GB" if fits else f"> {CARDS_GB[-1]} GB"

    te = p["components"][0]["params_bytes"] if p["components"] else 0
    cards = ", ".join(f"{c} GB" for c in CARDS_GB)
    L = ["## Will it fit", "", "Decode (batch 1, text encoder resident) and training (one device's share: "
         f"FSDP over {p['world']}, batch 1, activation checkpointing on); the "
         f"smallest of {cards} it fits, before the CUDA context and fragmentation.", "",
         "| what | size | memory | smallest card |", "|---|---|---:|---|"]
    last = p["decode"][-1]["preset"] if p["decode"] else None
    tiled = {r["size"]: r for r in p["tiled"] if r["preset"] == last}
    for r in (r for r in p["decode"] if r["preset"] == last):
        L.append(f"| decode ({last}) | {r['size']}² | {gb(r['peak'] + te)} GiB | {card(r['peak'] + te)} |")
        if r["size"] in tiled:
            t = tiled[r["size"]]
            L.append(f"| decode, tiled {t['tile']}/{t['tile_overlap']} | {r['size']}² "
                     f"| {gb(t['peak'] + te)} GiB | {card(t['peak'] + te)} |")
    names = {"v1": "teacher v1 (joint)", "v1.5": "teacher v1.5 (adapter only)", "dmd2": "DMD2"}
    for r in p["train"]:
        if r["ac"] and r["batch"] == 1:
            L.append(f"| {names[r['kind']]}, CP {r['cp']} | {r['size']}² | {gb(r['per_device'])} GiB "
                     f"| {card(r['per_device'])} |")
    return L + [""]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["flux_2k", "flux_2kto4k_v1pt5"],
                    help="student releases to decode (conf/releases)")
    ap.add_argument("--decode-sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--train", nargs="*", default=["v1", "v1.5", "dmd2"], choices=["v1", "v1.5", "dmd2"])
    ap.add_argument("--train-sizes", type=int, nargs="+", default=[2048, 4096])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--cp", type=int, nargs="*", default=[2, 4])
    ap.add_argument("--world", type=int, default=8, help="FSDP devices")
    ap.add_argument("--tile", type=int, default=1024, help="tile side of the tiled decode rows (pixels)")
    ap.add_argument("--tile-overlap", type=int, default=128)
    ap.add_argument("--tiled-presets", nargs="*", default=["flux_2kto4k_v1pt5"],
                    help="presets with tiled rows (one sampler step each: the tracker is slow on many tiles)")
    ap.add_argument("--no-components", action="store_true", help="skip the text encoder and VAE rows")
    ap.add_argument("--tiny", action="store_true", help="tiny networks (conf/model/net/tiny.yaml): for tests")
    ap.add_argument("--out", default=str(REPO / "benchmarks"))
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    commit = _git("rev-parse", "--short", "HEAD")  # the tree it starts on
    dirty = len(_git("status", "--porcelain", "--untracked-files=no").splitlines())

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f}s] {msg}", flush=True)

    fake = Fake()
    components = []
    if not args.no_components:
        te = text_encoder_row(fake)
        components.append(te)
        components += vae_rows(fake, sorted({s // 4 for s in args.train_sizes}))
        for r in components:
            r["params_bytes"] = r["parts"].get("Parameter", 0)
            log(f"{r['model']}: {r['params'] / 1e9:.3f} B params, {r['what']}: peak {gb(r['peak'])} GiB")
    decode, tiled = [], []
    has_tile = tiled_available()
    for preset in args.presets:
        rel, build = (tiny_release_net if args.tiny else release_net)(preset)
        for size in args.decode_sizes:
            r = {"preset": preset, **decode_row(fake, rel, build, size)}
            decode.append(r)
            log(f"decode {preset} {size}²: peak {gb(r['peak'])} GiB "
                f"(params {gb(r['parts'].get('Parameter', 0))})")
            if has_tile and size > args.tile and preset in args.tiled_presets:
                t = {"preset": preset, "tile": args.tile, "tile_overlap": args.tile_overlap,
                     **decode_row(fake, rel, build, size, args.tile, args.tile_overlap, steps=1)}
                tiled.append(t)
                log(f"decode {preset} {size}² tiled {args.tile}/{args.tile_overlap}: "
                    f"peak {gb(t['peak'])} GiB")
    train = train_rows(fake, args, log) if args.train else []
    te_bytes = components[0]["params_bytes"] if components else 0
    notes = []
    for size, paper in PAPER_DECODE_GB.items():
        rows = [r for r in decode if r["size"] == size]
        if rows and not args.tiny:
            ours = rows[-1]["peak"] + te_bytes
            notes.append(f"{size}²: {gb(ours)} GiB = {ours / 1e9:.1f} GB vs {paper} GB "
                         f"({(ours / GIB / paper - 1) * 100:+.0f} % read as GiB, "
                         f"{(ours / 1e9 / paper - 1) * 100:+.0f} % read as 10⁹ B)")
    payload = {
        "what": "predicted per-device GPU memory at paper size (MemTracker on fake tensors)",
        "tiny": args.tiny, "world": args.world, "commit": commit, "dirty": dirty,
        "torch": torch.__version__, "machine": platform.machine() or "cpu",
        "paper_decode_gb": {str(k): v for k, v in PAPER_DECODE_GB.items()},
        "components": components, "decode": decode, "tiled": tiled,
        "tiled_note": ("" if has_tile else "pid.sampling.decode_latent has no tile argument in this tree "
                       "(no number is given for it)"),
        "decode_note": ("The paper's decode figure is read as the whole decoder process on the GPU: PiD and "
                        "its caption encoder resident (PiD alone is the column before). "
                        + "; ".join(notes) + ". The paper does not say what its figure counts (2048²: "
                        "RTX 5090, 4096²: H100, both torch.compile'd, whose fused kernels keep fewer "
                        "intermediates than these eager rows). What a reading of the whole process adds and "
                        "these rows leave out: the CUDA context (≈0.5 GB) and the caching allocator's "
                        "reserve above the allocated peak; `make gpu-check` measures the allocated peak on "
                        "the GPU."),
        "train": train,
        "cp_note": ("CP > 1: pid's context parallelism (pid.parallel.context: patch rows split over the "
                    "CP group, keys/values all-gathered, text and adapter whole on every rank) run as rank 0 "
                    "of a DP 1 × CP group on PyTorch's fake process group, whose collectives return "
                    "full-size buffers; data parallelism and FSDP shard over all devices as above."),
        "seconds": time.perf_counter() - t0,
    }
    write_outputs(Path(args.out), payload)
    log(f"wrote {Path(args.out) / 'memory.md'} and memory.json")
    return payload


if __name__ == "__main__":
    main()
