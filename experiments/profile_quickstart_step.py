"""Time one quickstart training step outside Lightning, for the choices in conf/experiment/quickstart.yaml.

    .venv/bin/python experiments/profile_quickstart_step.py [N=8] [BF16] [hydra overrides...]
    OMP_NUM_THREADS=1 .venv/bin/python experiments/profile_quickstart_step.py data.batch_size=4

A step: the quickstart module's training_condition + diffusion_loss on a fixed random batch at the
configured crop and batch size, backward, AdamW. ``BF16`` wraps the forward in CPU bf16 autocast. Prints the
median and the minimum over N steps (the first is dropped as warm-up). Data loading is not included.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str]) -> None:
    from pid.train import build
    from pid.utils.images import to_signed

    n = next((int(a[2:]) for a in argv if a.startswith("N=")), 8)
    bf16 = "BF16" in argv
    over = [a for a in argv if not a.startswith("N=") and a != "BF16"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=quickstart", "logger=none",
                                          "paths.output_dir=/tmp/pid_profile_step", *over])
    _, module, _ = build(cfg)
    opt = torch.optim.AdamW(module.net.parameters(), lr=1e-4)
    c, b = int(cfg.data.crop_size), int(cfg.data.batch_size)
    x = torch.rand(b, 3, c, c, generator=torch.Generator().manual_seed(0)) * 255
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        hq = to_signed(x)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            cond = module.training_condition(hq)
            loss = module.diffusion_loss(hq, cond, module.sample_t(b, c, c), torch.randn_like(hq))["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
    times = sorted(times[1:])
    what = f"{' '.join(over) or 'quickstart'} {'bf16 autocast' if bf16 else 'float32'}"
    print(f"{what}, {torch.get_num_threads()} threads: median {times[len(times) // 2]:.3f} s/step, "
          f"min {times[0]:.3f} s/step")


if __name__ == "__main__":
    main(sys.argv[1:])
