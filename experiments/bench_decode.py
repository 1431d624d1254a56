"""Decode cost: the PiD student's sampler step vs the bare backbone, and the 4-step student vs the
25-step diffusion-SR cascade of the same backbone class, side by side in one run, several sizes.

Networks (random weights: cost does not depend on them), built from the configs ``make train`` uses:
- PiD: ``experiment=quickstart`` (tiny PixelDiT + adapter on the patch-PCA latent, ``--net`` to change);
- SR cascade: ``experiment=quickstart_sr``, the same classes on the low-res RGB image (identity latent).

Per output size, at batch 1:
- step: one network call of a decode. ``backbone`` = the PiD network's own PixelDiT forward (no
  adapter, no gates); ``pid step`` = the call every sampler step makes (adapter features computed once
  per decode and passed in; gates on the step's tokens and σ); ``pid step, adapter each step`` = the
  call with the latent (the adapter trunk recomputed, as before the per-decode cache);
- decode: ``student`` = PiD with the 4-step SDE student schedule (``student_timesteps``), CFG 1;
  ``cascade`` = native decode of the latent (patch-PCA) + the SR model at 25 Euler steps (as
  ``pid.eval.baselines.sr_cascade``). A round runs one cascade decode and, back to back, six student
  decodes (about as long), whose median is the round's student time.

Calls alternate order round by round; each ratio is the median over rounds of the per-round ratio
(``--rounds`` decode rounds, ``--step-rounds`` times as many step rounds). The headline ratios are of
the process's CPU time per call (one thread: the work done, whatever else the shared machine runs);
the wall-clock ratios are written beside them.
Writes benchmarks/decode.json and benchmarks/decode.md. Goals: pid step / backbone ≤ 1.05,
cascade / student ≥ 6.0.

    OMP_WAIT_POLICY=PASSIVE python experiments/bench_decode.py [--sizes 128 192 256] [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
T_LIST = [0.999, 0.866, 0.634, 0.342]
STUDENT_REPEATS = 6  # student decodes per round (their median pairs with one cascade decode)


def build(experiment: str, net: str):
    """(network, latent, sr_scale) of an experiment config, random weights, eval mode."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from pid.latents.patch_pca import PatchPCALatent

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        overrides = [f"experiment={experiment}", f"model/net={net}"]
        if net != "tiny":
            overrides.append("model/net/adapter=v1")
        cfg = compose("train", overrides=overrides)
    torch.manual_seed(0)
    latent = instantiate(cfg.latent)
    if isinstance(latent, PatchPCALatent) and not latent.fitted:  # fitted on random images: cost only
        g = torch.Generator().manual_seed(0)
        latent.fit(torch.rand(8, 3, 64, 64, generator=g) * 2 - 1 for _ in range(4))
    return instantiate(cfg.model.net).eval(), latent.eval(), int(cfg.sr_scale)


def timed(fn) -> tuple[float, float]:
    """(CPU ms of this process, wall ms) of one call."""
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return (time.process_time() - c0) * 1e3, (time.perf_counter() - t0) * 1e3


def bench_size(size: int, pid_net, latent, sr_net, rgb, sr_scale: int, rounds: int, step_rounds: int) -> dict:
    from pid.diffusion.schedules import student_timesteps
    from pid.nn.pixel_dit import PixelDiT
    from pid.sampling import decode_latent

    down = latent.down_factor
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, latent.channels, size // (sr_scale * down), size // (sr_scale * down), generator=g)
    x = torch.randn(1, 3, size, size, generator=g)
    t = torch.full((1,), 0.5)
    sigma = torch.zeros(1)
    feats = pid_net.encode_latent(z, (size, size))
    t4 = student_timesteps(T_LIST)

    def cascade():
        low = latent.decode(z).float()
        return decode_latent(sr_net, rgb.encode(low), 0.0, sr_scale=sr_scale, latent_down=rgb.down_factor,
                             num_steps=25, sampler="euler", generator=torch.Generator().manual_seed(0))

    fns = {
        "backbone": lambda: PixelDiT.forward(pid_net, x, t),
        "pid_step": lambda: pid_net(x, t, sigma=sigma, latent_features=feats),
        "pid_step_adapter_each_step": lambda: pid_net(x, t, latent=z, sigma=sigma),
        "student_4": lambda: decode_latent(pid_net, z, 0.0, sr_scale=sr_scale, latent_down=down, num_steps=4,
                                           sampler="sde", timesteps=t4,
                                           generator=torch.Generator().manual_seed(0)),
        "cascade_25": cascade,
    }
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up
        fn()
    steps = ("backbone", "pid_step", "pid_step_adapter_each_step")
    for r in range(rounds * step_rounds):  # the cheap step calls, paired per round
        for k in steps if r % 2 == 0 else reversed(steps):
            times[k].append(timed(fns[k]))
    for r in range(rounds):  # one cascade decode against STUDENT_REPEATS student decodes (similar time)
        for k in ("student_4", "cascade_25") if r % 2 == 0 else ("cascade_25", "student_4"):
            runs = [timed(fns[k]) for _ in range(STUDENT_REPEATS if k == "student_4" else 1)]
            times[k].append(tuple(statistics.median(c) for c in zip(*runs)))

    def paired(a: str, b: str, i: int) -> float:
        """Median over rounds of the per-round ratio a / b (i = 0: CPU time, 1: wall time)."""
        return statistics.median(x[i] / y[i] for x, y in zip(times[a], times[b]))

    def ratios(i: int) -> dict:
        return {
            "pid_step_over_backbone": round(paired("pid_step", "backbone", i), 3),
            "adapter_each_step_over_backbone": round(paired("pid_step_adapter_each_step", "backbone", i), 3),
            "cascade_over_student": round(paired("cascade_25", "student_4", i), 2),
        }

    return {
        "size": size,
        "median_cpu_ms": {k: round(statistics.median(c for c, _ in v), 2) for k, v in times.items()},
        "median_wall_ms": {k: round(statistics.median(w for _, w in v), 2) for k, v in times.items()},
        "rounds": {k: len(v) for k, v in times.items()},
        **ratios(0),
        "wall": ratios(1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 192, 256])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--step-rounds", type=int, default=15, help="step rounds per decode round")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--net", default="tiny")
    ap.add_argument("--out", default=str(REPO / "benchmarks"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pid_net, latent, sr_scale = build("quickstart", args.net)
    sr_net, rgb, sr_scale_sr = build("quickstart_sr", args.net)
    assert sr_scale == sr_scale_sr, "PiD and the SR cascade must upscale by the same factor"
    rows = []
    with torch.inference_mode():
        for size in args.sizes:
            row = bench_size(size, pid_net, latent, sr_net, rgb, sr_scale, args.rounds, args.step_rounds)
            rows.append(row)
            m = row["median_cpu_ms"]
            print(f"{size:>5}px  backbone {m['backbone']:.1f} ms  pid step {m['pid_step']:.1f} ms "
                  f"({row['pid_step_over_backbone']:.3f}x; "
                  f"adapter each step {row['adapter_each_step_over_backbone']:.3f}x)"
                  f"  student@4 {m['student_4']:.1f} ms  cascade@25 {m['cascade_25']:.1f} ms "
                  f"({row['cascade_over_student']:.2f}x)", flush=True)
    payload = {
        "what": "PiD decode cost on CPU: per-step vs the bare backbone, 4-step student vs 25-step SR cascade",
        "net": args.net,
        "batch": 1,
        "threads": args.threads,
        "rounds": args.rounds,
        "goals": {"pid_step_over_backbone": "<= 1.05", "cascade_over_student": ">= 6.0"},
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                    "torch": torch.__version__},
        "results": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "decode.json").write_text(json.dumps(payload, indent=1))
    lines = [
        f"# Decode cost: PiD step vs backbone, 4-step student vs 25-step SR cascade ({args.net} net, CPU)",
        "",
        f"Batch 1, fp32, {args.threads} thread(s), random weights. Times are the process's CPU time per call "
        "(with one thread, the work done whatever else the shared machine runs); ratios are medians over "
        f"interleaved rounds of the per-round ratio ({args.rounds} decode rounds of one cascade and "
        f"{STUDENT_REPEATS} student decodes, {args.rounds * args.step_rounds} step rounds); wall-clock "
        "ratios in the second table. "
        "`pid step`: one sampler step with the adapter features computed once per decode; "
        "`adapter each step`: the same call recomputing the adapter trunk (before the cache). "
        "Cascade: native patch-PCA decode + the same backbone class on the low-res RGB image, "
        "25 Euler steps.",
        "",
        "| size | backbone ms | pid step ms | step / backbone | adapter each step / backbone "
        "| student@4 ms | cascade@25 ms | cascade / student |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        m = r["median_cpu_ms"]
        lines.append(f"| {r['size']}² | {m['backbone']:.1f} | {m['pid_step']:.1f} "
                     f"| {r['pid_step_over_backbone']:.3f}× | {r['adapter_each_step_over_backbone']:.3f}× "
                     f"| {m['student_4']:.1f} | {m['cascade_25']:.1f} | {r['cascade_over_student']:.2f}× |")
    lines += ["", "Wall clock (the same rounds; other processes share the cores):", "",
              "| size | backbone ms | pid step ms | step / backbone | adapter each step / backbone "
              "| student@4 ms | cascade@25 ms | cascade / student |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        m, w = r["median_wall_ms"], r["wall"]
        lines.append(f"| {r['size']}² | {m['backbone']:.1f} | {m['pid_step']:.1f} "
                     f"| {w['pid_step_over_backbone']:.3f}× | {w['adapter_each_step_over_backbone']:.3f}× "
                     f"| {m['student_4']:.1f} | {m['cascade_25']:.1f} | {w['cascade_over_student']:.2f}× |")
    lines += ["", "Goals: step / backbone ≤ 1.05; cascade / student ≥ 6.0."]
    (out / "decode.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'decode.json'} and {out / 'decode.md'}")


if __name__ == "__main__":
    main()
