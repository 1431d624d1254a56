"""GPU check: the paper-size student's decode and a paper-size teacher training step on one GPU.

    make gpu-check                                   # CUDA: paper size, one H100 in ≤ 8 minutes
    python -m experiments.gpu_check --tiny --out DIR # CPU: the same code at the tiny size (the test runs it)

Writes ``gpu.json`` and ``gpu.md`` (default ``benchmarks/``) with the device's name. Networks have random
weights (time and memory do not depend on them), built directly on the device.

Decode — the 4-step student of a release preset (``--preset``, the 2K→4K v1.5 FLUX student by default),
batch 1, one caption's states (300 tokens), ``pid.sampling.decode_latent`` with the student's SDE sampler,
bf16 weights and autocast on CUDA (fp32 on CPU); per output size:
``eager``, ``compiled`` (``torch.compile`` of the network; its compile time is reported apart) and
``tiled`` (``tile=``/``tile_overlap=``, when the output is larger than a tile). Each time is the median of
``--runs`` decodes after ``--warmup`` untimed ones, every decode bracketed by ``torch.cuda.synchronize()``;
peak memory is ``torch.cuda.max_memory_allocated`` over the timed decodes (the network's weights, resident,
included; no text encoder or VAE is loaded).

Training — one teacher step of ``experiment=pid_vae_4x`` (the v1 network trained jointly) at
``--train-size`` and ``--batch``: fp32 weights, bf16 autocast, AdamW with gradient clipping (as
``trainer=gpu``), with and without activation checkpointing of every MM-DiT / PiT block; images/s, patch
tokens/s, model FLOP utilisation (FLOPs of one step from ``torch.utils.flop_counter`` × steps/s ÷ the GPU's
dense bf16 peak) and peak memory. The latent and caption states are random tensors of the right shapes (no
VAE, no Gemma).

Items run in a fixed order (eager decodes, training steps, tiled, compiled at 2048² and 4096² first); one
that would start after ``--budget-s`` is recorded as skipped, so that the whole check stays near its 8
minutes on an H100 (an estimate from the paper's decode times: this code has not run on a GPU yet).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import subprocess
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
#: Dense bf16 peak FLOP/s by device name (the same table as experiments/bench_train.py).
from experiments.bench_train import PEAK_BF16  # noqa: E402

TEXT_TOKENS = 300


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def timed_runs(fn, device: torch.device, warmup: int, runs: int) -> dict:
    """Median / min / max ms of ``runs`` calls after ``warmup`` (synchronised), and the peak memory."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    _sync(device)
    warm_s = time.perf_counter() - t0
    _reset_peak(device)
    times = []
    for _ in range(runs):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "runs": runs,
            "warmup": warmup, "warmup_s": warm_s, "peak_gib": _peak_gib(device)}


# ---------------------------------------------------------------------------------------------- decode
def build_student(preset: str, tiny: bool, device: torch.device, dtype: torch.dtype):
    from experiments.predict_memory import release_net, tiny_release_net

    rel, build = (tiny_release_net if tiny else release_net)(preset)
    torch.manual_seed(0)
    with torch.device(device):
        net = build()
    return rel, net.to(dtype).eval()


def decode_fn(rel, net, size: int, device: torch.device, autocast, tile: int | None = None, overlap: int = 0):
    from pid.diffusion.schedules import student_timesteps
    from pid.sampling import decode_latent

    sr = int(rel.sr_scale)
    down = int(rel.build_latent(geometry_only=True).down_factor)
    adapter = getattr(net, "adapter", None) or getattr(getattr(net, "_orig_mod", None), "adapter", None)
    channels = int(adapter.latent_channels)
    t_list = rel.sampling.get("t_list") or [0.999, 0.866, 0.634, 0.342]
    timesteps = student_timesteps(t_list, int(rel.sampling.get("num_steps", 4)))
    g = torch.Generator(device="cpu").manual_seed(0)
    z = torch.randn(1, channels, size // (sr * down), size // (sr * down), generator=g).to(device)
    txt_dim = getattr(net, "txt_embed_dim", None) or net._orig_mod.txt_embed_dim
    y = torch.zeros(1, TEXT_TOKENS, txt_dim, device=device)
    extra = {} if tile is None else {"tile": tile, "tile_overlap": overlap}

    def run():
        with torch.no_grad(), autocast():
            return decode_latent(net, z, 0.0, sr_scale=sr, latent_down=down, num_steps=len(timesteps) - 1,
                                 sampler="sde", text=(y, None), timesteps=timesteps, **extra)

    return run


# ---------------------------------------------------------------------------------------------- training
def build_teacher(tiny: bool, device: torch.device):
    from hydra.utils import instantiate

    from experiments.predict_memory import compose
    from pid.latents.geometry import LatentGeometry

    over = ["experiment=pid_vae_4x", "text=none"]
    if tiny:
        over += ["model/net=tiny", "model/net/adapter=tiny"]
    cfg = compose(over)
    latent = LatentGeometry(int(cfg.latent.channels), int(cfg.latent.down_factor))
    torch.manual_seed(0)
    with torch.device(device):
        module = instantiate(cfg.model, latent=latent, text_encoder=None, _convert_="all")
    return module.to(device).train(), float(cfg.trainer.gradient_clip_val or 1.0)


def train_step_fn(module, size: int, batch: int, device: torch.device, autocast, clip: float):
    from pid.diffusion import flow

    net = module.net
    sr, down = module.sr_scale, int(module.latent.down_factor)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = module.configure_optimizers()["optimizer"]
    g = torch.Generator(device="cpu").manual_seed(0)
    hq = (torch.rand(batch, 3, size, size, generator=g) * 2 - 1).to(device)
    h = size // (sr * down)
    cond = {"latent": torch.randn(batch, net.adapter.latent_channels, h, h, generator=g).to(device),
            "sigma": (torch.rand(batch, generator=g) * 0.8).to(device),
            "latent_keep": torch.ones(batch, dtype=torch.bool, device=device),
            "y": torch.randn(batch, TEXT_TOKENS, net.txt_embed_dim, generator=g).to(device), "y_mask": None,
            "lq": (torch.rand(batch, 3, size // sr, size // sr, generator=g) * 2 - 1).to(device)}

    def loss_of():
        t = flow.sample_training_t(batch, size, size, device=device)
        with autocast():
            return module.diffusion_loss(hq, cond, t, torch.randn_like(hq))["loss"]

    def step():
        loss = loss_of()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def flops() -> float:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            loss_of().backward()
        optimizer.zero_grad(set_to_none=True)
        return float(counter.get_total_flops())

    return step, flops


# ---------------------------------------------------------------------------------------------- runner
def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s))"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny networks (conf/model/net/tiny.yaml): CPU test")
    ap.add_argument("--preset", default="flux_2kto4k_v1pt5", help="student release preset (conf/releases)")
    ap.add_argument("--sizes", type=int, nargs="+", default=None,
                    help="decode sizes (default 1024 2048 4096; tiny: 64 128)")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--tile", type=int, default=None, help="tile side in px (default 1024; tiny: 64)")
    ap.add_argument("--tile-overlap", type=int, default=None, help="default 128; tiny: 16")
    ap.add_argument("--compile-backend", default="inductor", help="torch.compile backend (the test: eager)")
    ap.add_argument("--train-size", type=int, default=None, help="teacher step crop (default 2048; tiny: 64)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--train-steps", type=int, default=10)
    ap.add_argument("--train-warmup", type=int, default=3)
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="items that would start later are skipped (a compile at 4096² may take ~2 min more)")
    ap.add_argument("--out", default=str(REPO / "benchmarks"))
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    if not cuda and not args.tiny:
        raise SystemExit("gpu_check: no CUDA device here. The paper-size check needs one GPU (an H100 runs "
                         "it in ≤ 8 min); `python -m experiments.gpu_check --tiny` runs the same code at the "
                         "tiny size on the CPU, and `make memory` predicts the paper-size memory without a "
                         "GPU.")
    sizes = args.sizes or ([64, 128] if args.tiny else [1024, 2048, 4096])
    tile = args.tile or (64 if args.tiny else 1024)
    overlap = args.tile_overlap if args.tile_overlap is not None else (16 if args.tiny else 128)
    train_size = args.train_size or (64 if args.tiny else 2048)
    dtype = torch.bfloat16 if cuda else torch.float32
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()

    def elapsed() -> float:
        return time.perf_counter() - t_start

    def log(msg: str) -> None:
        print(f"[{elapsed():5.0f}s] {msg}", flush=True)

    def guarded(kind: str, what: dict, fn, into: list) -> None:
        if elapsed() > args.budget_s:
            row = {**what, "status": f"skipped: past the {args.budget_s:.0f} s budget"}
        else:
            try:
                row = {**what, "status": "ok", **fn()}
            except torch.OutOfMemoryError:
                row = {**what, "status": "out of memory"}
            except Exception as err:  # one failing item must not cost the others' numbers on a lent GPU
                traceback.print_exc()
                row = {**what, "status": f"error: {type(err).__name__}: {str(err)[:300]}"}
            finally:
                if cuda:
                    torch.cuda.empty_cache()
        log(f"{kind} {what}: {row['status']}" + (
            f", {row['median_ms']:.1f} ms" if "median_ms" in row else "") + (
            f", {row['images_per_s']:.2f} images/s" if "images_per_s" in row else "") + (
            f", peak {row['peak_gib']:.2f} GiB" if row.get("peak_gib") is not None else ""))
        into.append(row)
        save(args, device, dtype, n_params, decode_rows, train_rows, elapsed())

    from pid.sampling import decode_latent
    import inspect

    has_tile = "tile" in inspect.signature(decode_latent).parameters
    rel, net = build_student(args.preset, args.tiny, device, dtype)
    n_params = sum(p.numel() for p in net.parameters())
    log(f"{device_name(device)}: student {args.preset} ({'tiny' if args.tiny else 'paper size'}, "
        f"{n_params / 1e9:.3f} B parameters, {dtype})")
    decode_rows, train_rows = [], []
    for size in sizes:  # eager first: the numbers every later item is compared with
        guarded("decode", {"mode": "eager", "size": size}, lambda size=size: timed_runs(
            decode_fn(rel, net, size, device, autocast), device, args.warmup, args.runs), decode_rows)

    del net
    if cuda:
        torch.cuda.empty_cache()
    for ac in (False, True):
        def train(ac=ac):
            module, clip = build_teacher(args.tiny, device)
            if ac:
                from experiments.predict_memory import checkpoint_blocks

                checkpoint_blocks(module.net)
            step, flops = train_step_fn(module, train_size, args.batch, device, autocast, clip)
            r = timed_runs(step, device, args.train_warmup, args.train_steps)
            n_flops = flops()
            steps_s = 1e3 / r["median_ms"]
            name = device_name(device)
            peak = next((v for k, v in PEAK_BF16.items() if k in name), None) if cuda else None
            tokens = (train_size // module.net.patch_size) ** 2 * args.batch
            del module
            return {**r, "images_per_s": steps_s * args.batch, "tokens_per_s": steps_s * tokens,
                    "tokens_per_image": tokens // args.batch,
                    "flops_per_step": n_flops, "mfu": n_flops * steps_s / peak if peak else None}

        guarded("train", {"run": "teacher v1 (pid_vae_4x)", "size": train_size, "batch": args.batch,
                          "activation_checkpointing": ac}, train, train_rows)

    rel, net = build_student(args.preset, args.tiny, device, dtype)
    for size in sizes:
        what = {"mode": "tiled", "size": size, "tile": tile, "tile_overlap": overlap}
        if not has_tile:
            decode_rows.append({**what, "status": "tiled decode not available in this tree"})
        elif size <= tile:
            decode_rows.append({**what, "status": "one tile covers the image (the eager decode)"})
        else:
            guarded("decode", what, lambda size=size: timed_runs(
                decode_fn(rel, net, size, device, autocast, tile, overlap), device, args.warmup, args.runs),
                decode_rows)
    compiled = torch.compile(net, backend=args.compile_backend, dynamic=False)
    for size in sorted(sizes, key=lambda s: (s not in (2048, 4096), s)):  # the paper's two sizes first
        def comp(size=size):
            fn = decode_fn(rel, compiled, size, device, autocast)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            first = time.perf_counter() - t0
            return {**timed_runs(fn, device, max(args.warmup - 1, 0), args.runs), "first_call_s": first}

        guarded("decode", {"mode": "compiled", "size": size, "backend": args.compile_backend}, comp,
                decode_rows)

    save(args, device, dtype, n_params, decode_rows, train_rows, elapsed())
    out = Path(args.out)
    log(f"wrote {out / 'gpu.md'} and gpu.json")
    errors = [r for r in decode_rows + train_rows if r["status"].startswith("error")]
    if errors:
        raise SystemExit(f"gpu_check: {len(errors)} item(s) failed (their rows say why); the others were "
                         "written")
    return json.loads((out / "gpu.json").read_text())


def predicted_peaks(preset: str, tiny: bool) -> dict:
    """The decode peaks ``make memory`` predicted for this preset (benchmarks/memory.json), GiB by
    "mode size" ("eager 2048", "tiled 4096"); empty when there is no prediction (or at the tiny size)."""
    path = REPO / "benchmarks" / "memory.json"
    if tiny or not path.exists():
        return {}
    mem = json.loads(path.read_text())
    modes = (("eager", "decode"), ("tiled", "tiled"))
    return {f"{mode} {r['size']}": r["peak"] / 2**30 for mode, key in modes
            for r in mem.get(key, []) if r["preset"] == preset}


def save(args, device, dtype, n_params, decode_rows, train_rows, seconds) -> None:
    """Write gpu.json and gpu.md with the rows so far (after every item: a run cut short keeps them)."""
    payload = {"what": "GPU check: paper-size student decode and teacher training step", "tiny": args.tiny,
               "device": device_name(device), "dtype": str(dtype).replace("torch.", ""),
               "torch": torch.__version__, "cuda": torch.version.cuda if device.type == "cuda" else None,
               "commit": _git_commit(), "preset": args.preset, "student_params": n_params,
               "decode": decode_rows, "train": train_rows, "seconds": seconds,
               "predicted": predicted_peaks(args.preset, args.tiny),
               "paper": {"decode_ms_h100": {"2048": 446, "4096": 3755},
                         "decode_gb": {"2048": 13.0, "4096": 22.5}}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(payload, indent=1))
    (out / "gpu.md").write_text(render_md(payload))


def _f(v, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def render_md(p: dict) -> str:
    size = "tiny networks (the CPU test)" if p["tiny"] else "paper size"
    lines = [f"# GPU check: {p['device']} ({size}, {p['dtype']})", "",
             f"`make gpu-check` at {p['commit'] or 'an uncommitted tree'}, torch {p['torch']}, "
             f"{p['seconds']:.0f} s. Student `{p['preset']}` ({p['student_params'] / 1e9:.3f} B parameters, "
             "random weights), batch 1, 4 SDE steps, one caption's states; median of the timed decodes after "
             "warm-up, synchronised; peak = torch.cuda.max_memory_allocated over the timed decodes. Paper "
             "(compiled): 446 ms on an H100 and 13.0 GB (RTX 5090) at 2048², 3755 ms and 22.5 GB on an H100 "
             "at 4096².", "",
             "Predicted: the peak `make memory` gives for the same decode (benchmarks/memory.md; eager, "
             "fake tensors on the CPU).", "",
             "| output | mode | median ms | min–max ms | peak GiB | predicted GiB | note |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in sorted(p["decode"], key=lambda r: (r["size"], ["eager", "compiled", "tiled"].index(r["mode"]))):
        note = r["status"] if r["status"] != "ok" else ""
        if r["mode"] == "tiled":
            note = (note + f" tile {r['tile']}, overlap {r['tile_overlap']}").strip()
        if r["mode"] == "compiled" and "first_call_s" in r:
            note = (note + f" first call (compiles) {r['first_call_s']:.0f} s").strip()
        pred = p.get("predicted", {}).get(f"{r['mode']} {r['size']}")
        lines.append(f"| {r['size']}² | {r['mode']} | {_f(r.get('median_ms'), '.1f')} | "
                     f"{_f(r.get('min_ms'), '.1f')}–{_f(r.get('max_ms'), '.1f')} "
                     f"| {_f(r.get('peak_gib'), '.2f')} | {_f(pred, '.2f')} | {note} |")
    lines += ["", "Teacher training step (fp32 weights, bf16 autocast, AdamW, gradient clipping):", "",
              "| run | crop | batch | activation checkpointing | images/s | tokens/s | MFU | peak GiB "
              "| note |",
              "|---|---|---:|---|---:|---:|---:|---:|---|"]
    for r in p["train"]:
        mfu = f"{r['mfu'] * 100:.1f} %" if r.get("mfu") is not None else "—"
        ac = "on" if r["activation_checkpointing"] else "off"
        lines.append(f"| {r['run']} | {r['size']}² | {r['batch']} | {ac} "
                     f"| {_f(r.get('images_per_s'), '.3f')} | {_f(r.get('tokens_per_s'), '.0f')} | {mfu} "
                     f"| {_f(r.get('peak_gib'), '.2f')} | {'' if r['status'] == 'ok' else r['status']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
