"""Tiled decode vs whole decode (pid.tiling), side by side in one run: peak memory, time, difference, seams.

Network: the quickstart's PiD network (``experiment=quickstart``: tiny PixelDiT, patch 8, + the adapter)
with random weights — its output layer and adapter heads drawn N(0, 0.05²) instead of zero, so the latent
and every block reach the output. No trained model ships, so the differences below measure what tiling
changes in the network's computation (attention limited to a tile), not image quality.

Per output size, the whole decode and the tiled decode (``--tile`` px tiles, ``--overlap`` px overlap) of
the same latent with the same noise (Euler, ``--steps`` steps, batch 1, float32, one thread). Each decode
runs in its own fresh process (``--worker``), one after the other:
- peak memory: the high-water mark of live tensor storage during the decode (pid.guard.PeakTensorMemory,
  a dispatch-mode counter: allocations minus frees), and the process's peak RSS (``ru_maxrss``) above its
  RSS just before the decode;
- time: the process's CPU time of one decode without the counter (one thread: the work done, whatever else
  the shared machine runs) and its wall time;
- the guard's estimate of the same decode (pid.guard.estimate_decode on meta tensors) beside the measured
  tensor peak;
- difference: max and mean |tiled − whole| on [-1, 1];
- seams: the mean squared luma step across the tile borders (where a tile starts or ends) over the mean
  step elsewhere, for the tiled decode and for the whole decode at the same positions; their ratio
  (goal ≤ 1.1: tiling adds no seam).
Writes benchmarks/tiled.json and benchmarks/tiled.md.

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE python experiments/bench_tiled.py [--sizes 256 512 1024]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SR, DOWN, CHANNELS = 4, 8, 16  # the quickstart's sr_scale and patch-PCA latent (16 channels, 8x down)


def build_net():
    """The quickstart PiD network, random weights (seed 0) with non-zero output layer and adapter heads."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=quickstart"])
    torch.manual_seed(0)
    net = instantiate(cfg.model.net).eval()
    heads = [*net.adapter.output_heads, net.final_layer.linear]
    if net.adapter.pit_head is not None:
        heads.append(net.adapter.pit_head)
    for m in heads:
        torch.nn.init.normal_(m.weight, std=0.05)
    return net


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def worker(size: int, tile: int | None, overlap: int | None, steps: int, out: str) -> dict:
    """One decode in this process: its tensor peak, RSS peak above the start, CPU and wall time."""
    from pid.guard import PeakTensorMemory, estimate_decode
    from pid.sampling import decode_latent

    torch.set_num_threads(1)
    net = build_net()
    z = torch.randn(1, CHANNELS, size // (SR * DOWN), size // (SR * DOWN),
                    generator=torch.Generator().manual_seed(1))
    kw = dict(sr_scale=SR, latent_down=DOWN, num_steps=steps, sampler="euler", tile=tile,
              tile_overlap=overlap)
    est = estimate_decode(net, tuple(z.shape), probe=False, **kw)
    rss0 = _rss_bytes()
    max0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with PeakTensorMemory() as mem:
        decode_latent(net, z, 0.0, generator=torch.Generator().manual_seed(2), **kw)
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    cpu0, wall0 = time.process_time(), time.perf_counter()
    img = decode_latent(net, z, 0.0, generator=torch.Generator().manual_seed(2), **kw)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    torch.save(img, out)
    return {"tensor_peak_bytes": mem.peak, "estimated_peak_bytes": est.peak_bytes,
            "rss_peak_above_start_bytes": max(rss_peak - rss0, 0), "rss_high_water_before_bytes": max0 - rss0,
            "cpu_s": cpu, "wall_s": wall}


def run_worker(size, tile, overlap, steps, out) -> dict:
    cmd = [sys.executable, __file__, "--worker", str(size), str(tile or 0), str(overlap or 0), str(steps),
           out]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode:
        raise RuntimeError(f"worker {cmd} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def borders(size: int, tile: int, overlap: int, patch: int) -> list[int]:
    """Pixel positions j where a tile starts or ends (the step between pixel j-1 and j crosses it)."""
    from pid.tiling import tile_starts

    starts = tile_starts(size, min(tile, size), overlap, patch)
    return sorted({s for s in starts if s > 0} | {s + tile for s in starts if s + tile < size})


def seam_ratio(img: torch.Tensor, cuts: list[int]) -> float:
    """Mean squared luma step across the given columns and rows over the mean step elsewhere (NaN without
    any: one tile covers the image)."""
    if not cuts:
        return float("nan")
    x = img.double()[0]
    luma = 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]
    across = inside = 0.0
    n_across = n_inside = 0
    for d in (luma.diff(dim=-1), luma.diff(dim=-2).T):  # d[:, j-1] = pixel j minus pixel j-1
        mask = torch.zeros(d.shape[-1], dtype=torch.bool)
        mask[[c - 1 for c in cuts]] = True
        e = d.square()
        across += float(e[:, mask].sum())
        inside += float(e[:, ~mask].sum())
        n_across += int(e[:, mask].numel())
        n_inside += int(e[:, ~mask].numel())
    return (across / n_across) / (inside / n_inside)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--worker", nargs=5, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite benchmarks/tiled.md from benchmarks/tiled.json without decoding")
    args = parser.parse_args()
    if args.report_only:
        data = json.loads((REPO / "benchmarks" / "tiled.json").read_text())
        data["meta"].setdefault("steps", int(data["meta"]["sampler"].split(", ")[1].split()[0]))
        data["meta"]["peak_fit"] = {mode: peak_fit(data["rows"], mode) for mode in ("whole", "tiled")}
        (REPO / "benchmarks" / "tiled.json").write_text(json.dumps(data, indent=2) + "\n")
        write_report(data["meta"], data["rows"])
        return
    if args.worker:
        size, tile, overlap, steps, out = args.worker
        print(json.dumps(worker(int(size), int(tile) or None, int(overlap) if int(tile) else None, int(steps),
                                out)))
        return

    from pid.tiling import plan_tiles

    patch = int(build_net().patch_size)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            whole = run_worker(size, None, None, args.steps, f"{tmp}/whole.pt")
            tiled = run_worker(size, args.tile, args.overlap, args.steps, f"{tmp}/tiled.pt")
            a, b = torch.load(f"{tmp}/whole.pt"), torch.load(f"{tmp}/tiled.pt")
            diff = (b - a).abs()
            cuts = borders(size, args.tile, args.overlap, patch)
            seam_tiled, seam_whole = seam_ratio(b, cuts), seam_ratio(a, cuts)
            n_tiles = len(plan_tiles((size, size), patch, args.tile, args.overlap).starts)
            rows.append({"size": size, "tiles": n_tiles, "whole": whole, "tiled": tiled,
                         "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
                         "mean_abs_whole": float(a.abs().mean()),
                         "seam_ratio_tiled": seam_tiled, "seam_ratio_whole": seam_whole,
                         "seam_tiled_over_whole": seam_tiled / seam_whole})
            print(json.dumps(rows[-1]), flush=True)
    meta = {"device": "cpu", "threads": 1, "torch": torch.__version__, "machine": platform.machine(),
            "network": "experiment=quickstart PiD network, random weights (output layer and adapter heads "
                       "N(0, 0.05^2))", "sampler": f"euler, {args.steps} steps, CFG 1, batch 1, float32",
            "steps": args.steps, "tile": args.tile, "overlap": args.overlap, "patch": patch,
            "peak_fit": {mode: peak_fit(rows, mode) for mode in ("whole", "tiled")}}
    (REPO / "benchmarks" / "tiled.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    write_report(meta, rows)


def peak_fit(rows: list[dict], mode: str) -> dict:
    """Least-squares line through the tensor peaks of ``mode``: {"fixed_bytes", "bytes_per_pixel"}."""
    x = torch.tensor([float(r["size"]) ** 2 for r in rows], dtype=torch.float64)
    y = torch.tensor([float(r[mode]["tensor_peak_bytes"]) for r in rows], dtype=torch.float64)
    a = torch.stack([torch.ones_like(x), x], 1)
    fixed, slope = torch.linalg.lstsq(a, y[:, None]).solution[:, 0].tolist()
    return {"fixed_bytes": fixed, "bytes_per_pixel": slope}


def write_report(meta: dict, rows: list[dict]) -> None:
    """benchmarks/tiled.md from the run's rows."""
    out = REPO / "benchmarks"
    steps, tile, overlap, patch = meta["steps"], meta["tile"], meta["overlap"], meta["patch"]
    mb = 1e6
    head1 = ["output", "tiles", "tensor peak whole MB", "tensor peak tiled MB", "tiled / whole",
             "estimate tiled MB", "RSS peak whole MB", "RSS peak tiled MB", "CPU s whole", "CPU s tiled",
             "tiled / whole"]
    head2 = ["output", "max abs diff", "mean abs diff", "mean abs whole", "seam step tiled",
             "seam step whole", "tiled / whole"]
    lines = [
        "# Tiled vs whole decode (tiny network, CPU)",
        "",
        f"`python experiments/bench_tiled.py` — the quickstart's PiD network with random weights (output "
        f"layer and adapter heads N(0, 0.05²)), Euler {steps} steps, batch 1, float32, 1 thread, torch "
        f"{meta['torch']}. Tiles of {tile} px with ≥ {overlap} px overlap (patch {patch}); "
        "the same latent and noise for both. Each decode runs in a fresh process, one after the other.",
        "",
        "| " + " | ".join(head1) + " |",
        "|---|" + "---:|" * (len(head1) - 1),
    ]
    for r in rows:
        w, t = r["whole"], r["tiled"]
        cells = [f"{r['size']}²", str(r["tiles"]), f"{w['tensor_peak_bytes'] / mb:.1f}",
                 f"{t['tensor_peak_bytes'] / mb:.1f}",
                 f"{t['tensor_peak_bytes'] / w['tensor_peak_bytes']:.2f}×",
                 f"{t['estimated_peak_bytes'] / mb:.1f}", f"{w['rss_peak_above_start_bytes'] / mb:.0f}",
                 f"{t['rss_peak_above_start_bytes'] / mb:.0f}", f"{w['cpu_s']:.2f}", f"{t['cpu_s']:.2f}",
                 f"{t['cpu_s'] / w['cpu_s']:.2f}×"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| " + " | ".join(head2) + " |", "|---|" + "---:|" * (len(head2) - 1)]
    for r in rows:
        cells = [f"{r['size']}²", f"{r['max_abs_diff']:.3f}", f"{r['mean_abs_diff']:.4f}",
                 f"{r['mean_abs_whole']:.3f}", f"{r['seam_ratio_tiled']:.3f}", f"{r['seam_ratio_whole']:.3f}",
                 f"{r['seam_tiled_over_whole']:.3f}×"]
        lines.append("| " + " | ".join(cells) + " |")
    fw, ft = meta["peak_fit"]["whole"], meta["peak_fit"]["tiled"]
    lines += [
        "",
        f"Peak as a line in the output's pixels (least squares over the sizes): whole "
        f"{fw['fixed_bytes'] / mb:.1f} MB + {fw['bytes_per_pixel']:.0f} B/pixel; tiled "
        f"{ft['fixed_bytes'] / mb:.1f} MB + {ft['bytes_per_pixel']:.0f} B/pixel. The tiled decode's "
        "network activations are those of one tile whatever the size (the fixed part); what grows is the "
        "image-sized state: the sampler's x, x̂₀, next x and noise, the blended velocity and its weights "
        "(float32 RGB maps of 12 B/pixel each) and the adapter's trunk map.",
        "",
        "Tensor peak: the high-water mark of live tensor storage during the decode "
        "(`pid.guard.PeakTensorMemory`); estimate: `pid.guard.estimate_decode` of the same decode on meta "
        "tensors. RSS peak: the process's `ru_maxrss` above its RSS just before the decode (allocator and "
        "library memory included). Seam step: the mean squared luma step across tile borders over the mean "
        "step elsewhere, at the same positions in both images (goal: tiled / whole ≤ 1.1). Differences are "
        "on [-1, 1].",
        "",
    ]
    (out / "tiled.md").write_text("\n".join(lines))
    print(f"wrote {out / 'tiled.md'} and {out / 'tiled.json'}")


if __name__ == "__main__":
    main()
