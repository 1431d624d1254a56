"""Latency / peak-memory table by output size (the paper's latency table (docs/method.md §1)'s shape),
with random weights.

For each output size: PiD at 4 steps (the student's SDE schedule) and at N teacher steps, the diffusion-SR
cascade (the same backbone on the RGB low-res image, 4 steps) and native decode + bicubic, timed with
warm-up and median of N runs (CUDA-synchronised on GPU; CUDA max-allocated or process peak RSS).
On a GPU the default is the paper-size backbone (model/net=paper) at 512–4096 px in bf16; on CPU the
tiny backbone at 128–512 px. Weights are random: latency does not depend on them.

    python experiments/eval_latency.py [--net paper|tiny] [--sizes 512 1024 2048 4096] [--runs 5]
        [--teacher-steps 25] [--dtype bf16|fp32] [--out logs/experiments/latency]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build(net_name: str, latent: str, device):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from pid.api import PiDDecoder
    from pid.latents.geometry import LatentGeometry

    exp = "quickstart_sr" if latent == "rgb" else "quickstart"
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        overrides = [f"experiment={exp}"] + ([f"model/net={net_name}"] if net_name != "tiny" else [])
        if net_name != "tiny":
            overrides.append("model/net/adapter=v1")
        cfg = compose("train", overrides=overrides)
    torch.manual_seed(0)
    net = instantiate(cfg.model.net).eval()
    geo = LatentGeometry(int(cfg.latent.channels), int(cfg.latent.down_factor))
    sampling = {"sampler": "sde", "num_steps": 4, "t_list": [0.999, 0.866, 0.634, 0.342], "one_step_t": 1.0}
    return PiDDecoder(net, geo, int(cfg.sr_scale), sampling=sampling).to(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available()
    p.add_argument("--net", default="paper" if cuda else "tiny")
    p.add_argument("--sizes", type=int, nargs="+",
                   default=[512, 1024, 2048, 4096] if cuda else [128, 256, 512])
    p.add_argument("--runs", type=int, default=5 if cuda else 2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--teacher-steps", type=int, default=25)
    p.add_argument("--dtype", default="bf16" if cuda else "fp32")
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    p.add_argument("--out", default=str(ROOT / "logs" / "experiments" / "latency" / stamp))
    a = p.parse_args()

    from pid.diffusion.schedules import student_timesteps
    from pid.eval.latency import measure
    from pid.utils.images import upsample

    device = torch.device("cuda" if cuda else "cpu")
    pid = build(a.net, "patch_pca", device)
    sr = build(a.net, "rgb", device)
    if a.dtype == "bf16":
        autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    else:
        autocast = contextlib.nullcontext()
    rows = []
    t4 = student_timesteps([0.999, 0.866, 0.634, 0.342])
    for size in a.sizes:
        cell = pid.sr_scale * pid.latent.down_factor
        z = torch.randn(1, pid.latent.channels, size // cell, size // cell, device=device)
        low = torch.rand(1, 3, size // pid.sr_scale, size // pid.sr_scale, device=device) * 2 - 1
        methods = {
            "native decode + bicubic (interp. only)": lambda: upsample(low, pid.sr_scale),
            "PiD 4 steps (student schedule)": lambda: pid.decode(z, 0.0, sampler="sde", timesteps=t4),
            f"PiD {a.teacher_steps} steps (teacher)": lambda: pid.decode(z, 0.0, num_steps=a.teacher_steps,
                                                                         sampler="euler"),
            "diffusion SR cascade 4 steps": lambda: sr.decode(low, 0.0, sampler="sde", timesteps=t4),
        }
        for name, fn in methods.items():
            try:
                with autocast:
                    t = measure(fn, device, a.warmup, a.runs)
                row = {"size": size, "method": name, **t.as_dict()}
            except torch.OutOfMemoryError:
                row = {"size": size, "method": name, "median_ms": float("nan"), "status": "out of memory"}
                torch.cuda.empty_cache()
            print(f"{size:>5}px  {name:<40} {row.get('median_ms', float('nan')):10.1f} ms  "
                  f"{row.get('peak_mem_mb', float('nan')):8.0f} MB", flush=True)
            rows.append(row)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("size", "method"), k))
    with (out / "latency.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    dev = torch.cuda.get_device_name() if cuda else "CPU"
    md = [f"# Latency / memory by output size ({a.net} backbone, {a.dtype}, {dev}, random weights)", "",
          "| size | method | median ms | p10–p90 ms | peak MB (kind) |", "|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['size']} | {r['method']} | {r.get('median_ms', float('nan')):.1f} | "
                  f"{r.get('p10_ms', float('nan')):.1f}–{r.get('p90_ms', float('nan')):.1f} | "
                  f"{r.get('peak_mem_mb', float('nan')):.0f} ({r.get('mem_kind', r.get('status', ''))}) |")
    (out / "latency.md").write_text("\n".join(md) + "\n")
    (out / "latency.json").write_text(json.dumps(rows, indent=2, default=float))
    print(f"wrote {out}/latency.md")


if __name__ == "__main__":
    main()
