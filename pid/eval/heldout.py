"""Held-out comparison after training: PiD's decode vs "native decode + bicubic" on validation crops.

Both start from the same latent of the same bicubic-downsampled crop; both are scored against the
ground-truth crop with PSNR (pixel fidelity) and the Inception feature distance (detail: rewards
*correct* detail; blur, noise and wrong texture all increase it — see pid/eval/functional.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import torch

from pid.eval.functional import inception_feature_distance, psnr
from pid.eval.inception import inception_feature_extractor
from pid.utils.images import to_signed, upsample

log = logging.getLogger(__name__)


@torch.no_grad()
def decode_heldout(module, loader, ema=None, num_steps: int | None = None, seed: int = 0,
                   max_crops: int | None = None) -> dict[str, torch.Tensor]:
    """Ground truth, baseline and PiD decodes (float [-1, 1], CPU) for every crop of ``loader``."""
    truth, baseline, decoded = [], [], []
    generator = torch.Generator().manual_seed(seed)
    was_training = module.training
    module.eval()
    try:
        with ema.averaged(module) if ema is not None else contextlib.nullcontext():
            for batch in loader:
                hq = to_signed(batch["image"].to(module.device))
                lq, z = module.encode_lq(hq)
                baseline.append(upsample(module.latent.decode(z).float(), module.sr_scale).cpu())
                decoded.append(module.decode(z, 0.0, num_steps=num_steps, generator=generator).float().cpu())
                truth.append(hq.cpu())
                if max_crops and sum(len(t) for t in truth) >= max_crops:
                    break
    finally:
        module.train(was_training)
    out = {"truth": torch.cat(truth), "baseline": torch.cat(baseline), "pid": torch.cat(decoded)}
    return {k: v[:max_crops] if max_crops else v for k, v in out.items()}


def compare_on_heldout(module, datamodule, ema=None, out_dir: str | Path = ".", num_steps: int | None = None,
                       seed: int = 0, max_crops: int | None = None) -> dict[str, float]:
    """Score both decoders on the validation crops, print one comparison line, write a JSON file."""
    datamodule.setup("validate")
    images = decode_heldout(module, datamodule.val_dataloader(), ema, num_steps, seed, max_crops)
    metrics = score_decodes(images)
    truth = images["truth"]
    n, size = truth.shape[0], tuple(truth.shape[-2:])
    wins = metrics["heldout/pid_inception_dist"] < metrics["heldout/baseline_inception_dist"]
    line = (f"held-out {n} crops {size[0]}x{size[1]} (sr {module.sr_scale}x): "
            f"PSNR PiD {metrics['heldout/pid_psnr']:.2f} dB vs native decode + bicubic "
            f"{metrics['heldout/baseline_psnr']:.2f} dB | Inception feature distance (lower is better) "
            f"PiD {metrics['heldout/pid_inception_dist']:.2f} vs native decode + bicubic "
            f"{metrics['heldout/baseline_inception_dist']:.2f} -> {'PiD' if wins else 'native decode + bicubic'} "
            f"has the more correct detail")
    write_comparison(out_dir, "heldout_comparison.json", truth, metrics, line)
    return metrics


def score_decodes(images: dict[str, torch.Tensor], extractor=None) -> dict[str, float]:
    """PSNR and Inception feature distance of every entry but "truth" against "truth"."""
    extractor = extractor if extractor is not None else inception_feature_extractor()
    truth = images["truth"]
    metrics = {}
    for name, pred in images.items():
        if name != "truth":
            metrics[f"heldout/{name}_psnr"] = float(psnr(pred, truth))
            metrics[f"heldout/{name}_inception_dist"] = float(inception_feature_distance(pred, truth, extractor))
    return metrics


def write_comparison(out_dir: str | Path, filename: str, truth: torch.Tensor, metrics: dict, summary: str) -> Path:
    """Print the summary and write it with the metrics to ``out_dir/filename`` (JSON)."""
    print(summary, flush=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / filename
    path.write_text(json.dumps({"crops": truth.shape[0], "size": tuple(truth.shape[-2:]), **metrics,
                                "summary": summary}, indent=2))
    return path
