"""Loader throughput: 2K crops from ~4K JPEGs, our bucket loader vs a naive "PIL open + resize + crop".

Input: a few ~4K JPEGs made in a temporary directory from scikit-image photos, upscaled ONLY to
serve as benchmark input (sizes of real 4K sources: UHD 3840×2160 both ways, 4032×3024 phone
photos, 4096² and 4096×2304). For each image and each of two target settings — square 2048² crops
("2K crops") and the docs/method.md §3 aspect buckets at 2048 — both loaders turn the JPEG bytes into a
uint8 crop of the same bucket:

- naive: full decode → resize the whole image to cover the bucket (bicubic) → random crop;
- ours (``pid.data.transforms.bucket_crop``): JPEG ``draft`` (DCT-domain 1/2, 1/4 … decoding)
  when the image is at least 2× the needed size, and antialiased bicubic resampling of only the
  crop's source region (``resize_rgb8``: PIL's filter by torch's vectorised uint8 kernel), never
  upsampling.

Samples/s are per worker (one process, one thread for PIL and torch, as in a DataLoader worker),
measured side by side in one run: passes alternate between the loaders, best pass of each of
``--repeats``. Writes benchmarks/loader.json and benchmarks/loader.md.

    python experiments/bench_loader.py [--repeats 3] [--out benchmarks]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pid.data.buckets import make_buckets
from pid.data.transforms import bucket_crop, naive_resize_crop

SIZES = [(3840, 2160), (2160, 3840), (4032, 3024), (4096, 4096), (4096, 2304), (3024, 4032)]
PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry"]


def make_inputs(folder: Path) -> list[Path]:
    import skimage.data as sd

    paths = []
    for (w, h), name in zip(SIZES, PHOTOS):
        img = Image.fromarray(np.asarray(getattr(sd, name)())).convert("RGB").resize((w, h), Image.BICUBIC)
        p = folder / f"{name}_{w}x{h}.jpg"
        img.save(p, quality=92)
        paths.append(p)
    return paths


def timed(fn, files: list[Path], seed: int) -> float:
    """Samples/s of one pass (each sample reads the file bytes and produces one crop)."""
    rng = random.Random(seed)
    t0 = time.perf_counter()
    for f in files:
        out = fn(f.read_bytes(), rng)
        assert out.dtype == np.uint8
    return len(files) / (time.perf_counter() - t0)


def run(repeats: int) -> dict:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = make_inputs(Path(tmp))
        for setting, buckets in (("square 2048²", make_buckets("square", 2048, 64)),
                                 ("paper buckets @2048", make_buckets("single", 2048, 64))):  # fmt: skip

            def ours(data, rng, buckets=buckets):
                return bucket_crop(data, buckets, rng, hflip=False)[0]

            def naive(data, rng, buckets=buckets):
                with Image.open(__import__("io").BytesIO(data)) as im:
                    bucket = buckets.assign(*im.size)
                return naive_resize_crop(data, bucket, rng)

            timed(ours, files[:1], 0)  # warm-up
            r_naive = r_ours = 0.0
            for r in range(repeats):  # alternate, so drifting load hits both alike
                r_naive = max(r_naive, timed(naive, files, r))
                r_ours = max(r_ours, timed(ours, files, r))
            results[setting] = {"naive_samples_per_s": round(r_naive, 3),
                                "ours_samples_per_s": round(r_ours, 3),
                                "speedup": round(r_ours / r_naive, 2)}  # fmt: skip
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    results = run(args.repeats)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "what": "2K crops from ~4K JPEGs, samples/s per worker (1 process, 1 thread), "
                "best of alternating passes",
        "inputs": [f"{w}x{h}" for w, h in SIZES],
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "pillow": Image.__version__,
            "torch": torch.__version__,
        },
        "results": results,
    }
    (out / "loader.json").write_text(json.dumps(payload, indent=1))
    lines = [
        "# Loader throughput: 2K crops from ~4K JPEGs (samples/s per worker)",
        "",
        f"Inputs: {', '.join(payload['inputs'])} (JPEG q92). Pillow {Image.__version__}.",
        "",
        "| target | naive PIL open + resize + crop | ours (draft + region resize) | speed-up |",
        "|---|---:|---:|---:|",
    ]
    for setting, r in results.items():
        lines.append(
            f"| {setting} | {r['naive_samples_per_s']:.2f} | {r['ours_samples_per_s']:.2f} "
            f"| {r['speedup']:.2f}× |"
        )
    (out / "loader.md").write_text("\n".join(lines) + "\n")
    for setting, r in results.items():
        print(
            f"{setting:>20}: naive {r['naive_samples_per_s']:.2f}/s  ours {r['ours_samples_per_s']:.2f}/s  "
            f"ratio {r['speedup']:.2f}x"
        )
    print(f"wrote {out / 'loader.json'} and {out / 'loader.md'}")


if __name__ == "__main__":
    main()
