"""Training throughput: the Lightning module vs. a plain PyTorch loop, same model, same batch, one run.

Three loops train the quickstart PiD (or ``--experiment``) on one fixed in-memory batch (so data loading is
not measured) for ``--steps`` optimizer steps after ``--warmup`` steps:

- ``plain``: forward (``PiDModule.training_condition`` + ``diffusion_loss``), backward, grad-norm clipping,
  AdamW + warm-up schedule, EMA update: the work one training step needs, no framework;
- ``lightning``: ``trainer.fit`` of the PiDModule with the EMA callback only (the framework's own cost);
- ``lightning+pid``: as trained by ``make train``: EMA, TrainingMonitor, NonFiniteGuard, PreemptionHandler.

Rounds alternate the loops and the best round of each counts (the machine may be shared). Prints
images/s, tokens/s (patch tokens: pixels / patch_size²) and the overhead ratio, and on CUDA the model
FLOP utilisation (FLOPs of one step from ``torch.utils.flop_counter`` × steps/s / the GPU's dense bf16
peak). Writes benchmarks/train_overhead.json and .md. Goal: overhead ≤ 5 %.

    python experiments/bench_train.py [--steps 30] [--rounds 3] [--batch-size 8] [--size 128]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "4090": 165e12}


def build_module(experiment: str, size: int, out: Path):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from pid.latents.patch_pca import PatchPCALatent

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", f"paths.output_dir={out}",
                                          f"data.crop_size={size}"])
    latent = instantiate(cfg.latent)
    if isinstance(latent, PatchPCALatent) and not latent.fitted:  # fit on random images: speed only
        g = torch.Generator().manual_seed(0)
        latent.fit(torch.rand(8, 3, 64, 64, generator=g) * 2 - 1 for _ in range(4))
    return instantiate(cfg.model, latent=latent, text_encoder=None, _convert_="all"), cfg


class FixedBatches(torch.utils.data.IterableDataset):
    def __init__(self, batch: dict, n: int):
        self.batch, self.n = batch, n

    def __iter__(self):
        for _ in range(self.n):
            yield self.batch


class Timer:
    """Times optimizer steps [warmup, warmup + steps) from inside Lightning (a callback)."""

    def __init__(self, warmup: int, device: torch.device):
        import lightning.pytorch as pl

        timer = self

        class _CB(pl.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                if trainer.global_step == warmup and timer.t0 is None:
                    _sync(device)
                    timer.t0 = time.perf_counter()

            def on_train_end(self, trainer, pl_module):
                _sync(device)
                timer.t1 = time.perf_counter()

        self.t0 = self.t1 = None
        self.callback = _CB()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_loop(module, batch, steps: int, warmup: int, device, precision: str, clip: float) -> float:
    from pid.utils.images import to_signed

    module = module.to(device).train()
    params = [p for p in module.net.parameters() if p.requires_grad]
    opt = module.configure_optimizers()
    optimizer, scheduler = opt["optimizer"], opt["lr_scheduler"]["scheduler"]
    shadow = [p.detach().float().clone() for p in params]
    image = batch["image"].to(device)
    t0 = None
    for step in range(warmup + steps):
        if step == warmup:
            _sync(device)
            t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            hq = to_signed(image)
            b, _, h, w = hq.shape
            cond = module.training_condition(hq)
            loss = module.diffusion_loss(hq, cond, module.sample_t(b, h, w), torch.randn_like(hq))["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for s, p in zip(shadow, params):
                s.lerp_(p.detach().float(), 1e-3)
    _sync(device)
    return steps / (time.perf_counter() - t0)


def lightning_loop(module, batch, steps: int, warmup: int, device, precision: str, clip: float,
                   full: bool, out: Path) -> float:
    import lightning.pytorch as pl

    from pid.lit.ema import EMA
    from pid.lit.fault_tolerance import NonFiniteGuard, PreemptionHandler
    from pid.lit.monitoring import TrainingMonitor

    timer = Timer(warmup, device)
    callbacks = [EMA(decay=0.999), timer.callback]
    if full:
        callbacks += [TrainingMonitor(), NonFiniteGuard(), PreemptionHandler()]
    trainer = pl.Trainer(accelerator=device.type if device.type == "cuda" else "cpu", devices=1,
                         precision=precision, max_steps=warmup + steps, logger=False,
                         enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         gradient_clip_val=clip, num_sanity_val_steps=0, callbacks=callbacks,
                         default_root_dir=str(out), log_every_n_steps=10)
    loader = torch.utils.data.DataLoader(FixedBatches(batch, warmup + steps), batch_size=None, num_workers=0)
    trainer.fit(module, train_dataloaders=loader)
    return steps / (timer.t1 - timer.t0)


def step_flops(module, batch, device, precision) -> float | None:
    from torch.utils.flop_counter import FlopCounterMode

    from pid.utils.images import to_signed

    module = module.to(device)
    hq = to_signed(batch["image"].to(device))
    b, _, h, w = hq.shape
    counter = FlopCounterMode(display=False)
    with counter, torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
        cond = module.training_condition(hq)
        loss = module.diffusion_loss(hq, cond, module.sample_t(b, h, w), torch.randn_like(hq))["loss"]
        loss.backward()
    module.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="quickstart")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--out", default=str(REPO / "benchmarks"))
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    torch.set_float32_matmul_precision("high")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = "bf16-mixed" if device.type == "cuda" else "32-true"
    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    module, cfg = build_module(args.experiment, args.size, tmp)
    patch = int(cfg.model.net.patch_size)
    batch = {"image": torch.randint(0, 256, (args.batch_size, 3, args.size, args.size), dtype=torch.uint8)}
    tokens_per_image = (args.size // patch) ** 2
    clip = float(cfg.trainer.gradient_clip_val or 1.0)
    init = {k: v.clone() for k, v in module.state_dict().items()}

    best = {"plain": 0.0, "lightning": 0.0, "lightning+pid": 0.0}
    for r in range(args.rounds):
        for name in best:
            module.load_state_dict(init, strict=False)
            if name == "plain":
                sps = plain_loop(module, batch, args.steps, args.warmup, device, precision, clip)
            else:
                sps = lightning_loop(module, batch, args.steps, args.warmup, device, precision, clip,
                                     full=name == "lightning+pid", out=tmp)
            best[name] = max(best[name], sps)
            print(f"round {r}: {name:14s} {sps * args.batch_size:8.2f} images/s", flush=True)

    flops = step_flops(module, batch, device, precision)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    peak = next((v for k, v in PEAK_BF16.items() if gpu and k in gpu), None)
    rows = {}
    for name, sps in best.items():
        rows[name] = {"steps_per_s": sps, "images_per_s": sps * args.batch_size,
                      "tokens_per_s": sps * args.batch_size * tokens_per_image,
                      "mfu": (flops * sps / peak) if (peak and flops) else None}
    result = {
        "experiment": args.experiment, "batch_size": args.batch_size, "size": args.size, "patch_size": patch,
        "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds,
        "device": gpu or platform.processor() or "cpu", "precision": precision, "torch": torch.__version__,
        "flops_per_step": flops,
        "threads": torch.get_num_threads(), "results": rows,
        "overhead_lightning": rows["plain"]["steps_per_s"] / rows["lightning"]["steps_per_s"] - 1,
        "overhead_lightning_pid": rows["plain"]["steps_per_s"] / rows["lightning+pid"]["steps_per_s"] - 1,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_overhead.json").write_text(json.dumps(result, indent=1))
    lines = [f"# Training throughput: Lightning vs plain PyTorch ({result['device']}, {precision})", "",
             f"{args.experiment}, batch {args.batch_size} × {args.size}², {args.steps} timed steps, best of "
             f"{args.rounds} rounds", "", "| loop | images/s | tokens/s | MFU |", "|---|---|---|---|"]
    for name, row in rows.items():
        mfu = f"{row['mfu'] * 100:.1f} %" if row["mfu"] is not None else "n/a"
        lines.append(f"| {name} | {row['images_per_s']:.2f} | {row['tokens_per_s']:.0f} | {mfu} |")
    lines += ["", f"overhead (plain / lightning − 1): {result['overhead_lightning'] * 100:+.1f} %; "
                  f"with the pid callbacks: {result['overhead_lightning_pid'] * 100:+.1f} % (goal ≤ 5 %)"]
    (out / "train_overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
