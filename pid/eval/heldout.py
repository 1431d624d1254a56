"""Held-out comparison after training: PiD's decode vs "native decode + bicubic" on validation crops.

Both start from the same latent of the same bicubic-downsampled crop, clean (σ = 0) and noised as an
LDM stopped early would leave it (σ = 0.4, :func:`pid.diffusion.noising.noise_latent`, one seeded noise
shared by both decoders). Both are scored against the ground-truth crop with paired measures that need no
downloaded weights (pid/eval/functional.py):

* PSNR (pixel fidelity; it prefers the blurry conditional mean),
* SSIM (local structure) and HaarPSI (a perceptual full-reference index), higher is better,
* the Inception feature distance (detail: correct detail lowers it; blur, noise and wrong texture raise it),
* blockiness relative to the ground truth's (gradient energy across the network's patch borders over
  that inside its patches, divided by the same ratio of the ground truth): 1 is the ground truth's,
  above 1 a visible patch grid; closer to 1 is better.

The verdict line says which decoder each measure favours and claims only what they all agree on.
Writes ``heldout_comparison.json``, ``heldout_grid.png`` (per σ, rows of native decode + bicubic | PiD |
ground truth) and ``heldout/compare.html``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path

import torch

from pid.eval.functional import blockiness, haarpsi, inception_feature_distance, psnr, ssim
from pid.eval.inception import inception_feature_extractor
from pid.nn.pixel_dit import network_patch_size
from pid.utils.images import to_signed, to_uint8, upsample

log = logging.getLogger(__name__)

BASELINE = "native decode + bicubic"
#: measure → (label, format, better): "higher", "lower" or "one" (closest to 1)
MEASURES = {
    "psnr": ("PSNR dB", "{:.2f}", "higher"),
    "ssim": ("SSIM", "{:.3f}", "higher"),
    "haarpsi": ("HaarPSI", "{:.3f}", "higher"),
    "inception_dist": ("Inception dist", "{:.1f}", "lower"),
    "blockiness": ("blockiness/GT", "{:.2f}", "one"),
}


#: Below this many crops a verdict is marked as too few to rank two decoders (the Inception distance of a
#: handful of crops swings by tens of units between draws).
MIN_CROPS_FOR_VERDICT = 8


def few_crops_caveat(n: int) -> str:
    """"" for ``n`` ≥ :data:`MIN_CROPS_FOR_VERDICT` crops, else a note to append to a verdict."""
    if n >= MIN_CROPS_FOR_VERDICT:
        return ""
    return (f" (only {n} crop{'s' if n != 1 else ''}: too few to rank; compare_options.max_crops=null "
            "scores every held-out crop)")


def sigma_tag(sigma: float) -> str:
    """Metric-key suffix of a latent noise level: 0 → "s0", 0.4 → "s0.4"."""
    return f"s{float(sigma):g}"


@torch.no_grad()
def decode_heldout(module, loader, ema=None, num_steps: int | None = None, seed: int = 0,
                   max_crops: int | None = None, sigma: float = 0.0) -> dict[str, torch.Tensor]:
    """Ground truth, baseline and PiD decodes (float [-1, 1], CPU) for every crop of ``loader``.

    With ``sigma`` > 0 the latent is noised once (seeded) and both decoders see the same noisy latent;
    PiD is told the level.
    """
    from pid.diffusion.noising import noise_latent

    truth, baseline, decoded = [], [], []
    generator = torch.Generator().manual_seed(seed)
    latent_noise = torch.Generator().manual_seed(seed + 1)
    was_training = module.training
    last = time.monotonic()
    log.info("held-out comparison at σ = %g: decoding %s crops", sigma, max_crops or "the validation")
    module.eval()
    try:
        with ema.averaged(module) if ema is not None else contextlib.nullcontext():
            for batch in loader:
                if time.monotonic() - last >= 30:
                    last = time.monotonic()
                    log.info("held-out comparison at σ = %g: %d crops decoded", sigma,
                             sum(len(t) for t in truth))
                hq = to_signed(batch["image"].to(module.device))
                lq, z = module.encode_lq(hq)
                if sigma:
                    xi = torch.randn(z.shape, generator=latent_noise).to(z.device, z.dtype)
                    z = noise_latent(z, float(sigma), xi, form=getattr(module.latent, "noise_form", "flow"))
                baseline.append(upsample(module.latent.decode(z).float(), module.sr_scale).clamp(-1, 1).cpu())
                pid = module.decode(z, float(sigma), num_steps=num_steps, generator=generator)
                decoded.append(pid.float().cpu())
                truth.append(hq.cpu())
                if max_crops and sum(len(t) for t in truth) >= max_crops:
                    break
    finally:
        module.train(was_training)
    out = {"truth": torch.cat(truth), "baseline": torch.cat(baseline), "pid": torch.cat(decoded)}
    return {k: v[:max_crops] if max_crops else v for k, v in out.items()}


def score_paired(images: dict[str, torch.Tensor], patch: int, extractor=None,
                 suffix: str = "") -> dict[str, float]:
    """All of :data:`MEASURES` for every entry but "truth", keys ``heldout/<name>_<measure><suffix>``."""
    extractor = extractor if extractor is not None else inception_feature_extractor()
    truth = images["truth"]
    truth_block = blockiness(truth, patch)
    metrics = {f"heldout/truth_blockiness_raw{suffix}": truth_block}
    for name, pred in images.items():
        if name == "truth":
            continue
        key = f"heldout/{name}_{{}}{suffix}"
        metrics[key.format("psnr")] = float(psnr(pred, truth))
        metrics[key.format("ssim")] = float(ssim(pred, truth))
        metrics[key.format("haarpsi")] = float(haarpsi(pred, truth))
        metrics[key.format("inception_dist")] = float(inception_feature_distance(pred, truth, extractor))
        metrics[key.format("blockiness")] = blockiness(pred, patch) / max(truth_block, 1e-12)
    return metrics


def favours_pid(measure: str, pid: float, baseline: float) -> bool | None:
    """True if ``measure`` favours PiD, False if the baseline, None on a tie."""
    better = MEASURES[measure][2]
    if better == "one":
        pid, baseline = -abs(math.log(max(pid, 1e-12))), -abs(math.log(max(baseline, 1e-12)))
    elif better == "lower":
        pid, baseline = -pid, -baseline
    if pid == baseline:
        return None
    return pid > baseline


def verdict(metrics: dict[str, float], suffix: str) -> tuple[str, dict[str, bool | None]]:
    """One line naming what each measure favours; a decoder is called ahead only when all measures agree."""
    votes = {m: favours_pid(m, metrics[f"heldout/pid_{m}{suffix}"], metrics[f"heldout/baseline_{m}{suffix}"])
             for m in MEASURES}
    pid = [MEASURES[m][0] for m, v in votes.items() if v is True]
    base = [MEASURES[m][0] for m, v in votes.items() if v is False]
    if not base and pid:
        return f"all {len(pid)} measures favour PiD", votes
    if not pid and base:
        return f"all {len(base)} measures favour {BASELINE}", votes
    return (f"the measures disagree: PiD ahead on {', '.join(pid) or 'none'}; {BASELINE} ahead on "
            f"{', '.join(base) or 'none'}"), votes


def comparison_table(metrics: dict[str, float], sigmas, n: int, size, sr_scale: int, patch: int,
                     steps: str) -> str:
    header = f"  {'σ':<5}{'decoder':<26}" + "".join(f"{MEASURES[m][0]:>16}" for m in MEASURES)
    lines = [f"held-out {n} crops {size[0]}x{size[1]} (sr {sr_scale}x), PiD ({steps}) vs {BASELINE}; "
             f"blockiness on the {patch}-px patch grid relative to the ground truth's (1 = same):", header]
    for sigma in sigmas:
        suffix = "_" + sigma_tag(sigma)
        for name, label in (("baseline", BASELINE), ("pid", "PiD")):
            row = "".join(f"{MEASURES[m][1].format(metrics[f'heldout/{name}_{m}{suffix}']):>16}"
                          for m in MEASURES)
            lines.append(f"  {f'{float(sigma):g}' if name == 'baseline' else '':<5}{label:<26}{row}")
        lines.append(f"  {'':<5}-> σ = {float(sigma):g}: {verdict(metrics, suffix)[0]}{few_crops_caveat(n)}")
    return "\n".join(lines)


def spread(n: int, total: int) -> list[int]:
    """``n`` indices spread evenly over ``range(total)`` (held-out crops come image by image)."""
    return torch.linspace(0, total - 1, min(n, total)).round().long().tolist() if total else []


def save_comparison_grid(decodes: dict[float, dict[str, torch.Tensor]], path: Path, n: int = 4) -> Path:
    """PNG: per σ a labelled band of ``n`` rows (crops spread over the set), columns native decode + bicubic |
    PiD | ground truth."""
    from PIL import Image, ImageDraw
    from torchvision.utils import make_grid

    bands = []
    for sigma, images in decodes.items():
        pick = spread(n, images["truth"].shape[0])
        rows = torch.stack([images[k][pick] for k in ("baseline", "pid", "truth")], dim=1).flatten(0, 1)
        grid = make_grid(to_uint8(rows), nrow=3, padding=2, pad_value=255).permute(1, 2, 0).numpy()
        band = Image.new("RGB", (grid.shape[1], grid.shape[0] + 14), "white")
        band.paste(Image.fromarray(grid), (0, 14))
        label = f"sigma = {float(sigma):g}: {BASELINE} | PiD | ground truth"
        ImageDraw.Draw(band).text((2, 1), label, fill="black")
        bands.append(band)
    out = Image.new("RGB", (max(b.width for b in bands), sum(b.height for b in bands)), "white")
    y = 0
    for band in bands:
        out.paste(band, (0, y))
        y += band.height
    path.parent.mkdir(parents=True, exist_ok=True)
    out.save(path)
    return path


def compare_on_heldout(module, datamodule, ema=None, out_dir: str | Path = ".", num_steps: int | None = None,
                       seed: int = 0, max_crops: int | None = None, sigmas=(0.0, 0.4),
                       grid_crops: int = 6, html_crops: int = 12, extractor=None) -> dict[str, float]:
    """Score both decoders on the validation crops at each latent noise level in ``sigmas``; print the
    table and the verdicts, write the JSON, the grid PNG and the HTML page. Returns the metrics.

    ``extractor``: the Inception feature extractor (default: the offline FID Inception)."""
    from pid.eval.report import write_html

    datamodule.setup("validate")
    sigmas = tuple(float(s) for s in sigmas)
    patch = network_patch_size(module)
    extractor = extractor if extractor is not None else inception_feature_extractor()
    metrics: dict[str, float] = {}
    decodes: dict[float, dict[str, torch.Tensor]] = {}
    for sigma in sigmas:
        start = time.perf_counter()
        images = decode_heldout(module, datamodule.val_dataloader(), ema, num_steps, seed, max_crops,
                                sigma=sigma)
        decoded_s = time.perf_counter() - start
        log.info("held-out comparison at σ = %g: %d crops decoded in %.0f s; scoring them", sigma,
                 images["truth"].shape[0], decoded_s)
        metrics.update(score_paired(images, patch, extractor, suffix="_" + sigma_tag(sigma)))
        log.info("held-out comparison at σ = %g: scored in %.0f s", sigma,
                 time.perf_counter() - start - decoded_s)
        decodes[sigma] = images
    for sigma in sigmas:
        suffix = "_" + sigma_tag(sigma)
        for m, v in verdict(metrics, suffix)[1].items():
            metrics[f"heldout/pid_ahead_{m}{suffix}"] = float(bool(v))
    if 0.0 in decodes:  # the σ = 0 numbers also under the keys of the earlier single-σ report
        for m in ("psnr", "inception_dist"):
            for name in ("pid", "baseline"):
                metrics[f"heldout/{name}_{m}"] = metrics[f"heldout/{name}_{m}_s0"]
    truth = decodes[sigmas[0]]["truth"]
    steps = f"{num_steps or module.sampling['num_steps']} {module.sampling.get('sampler', '')} steps"
    summary = comparison_table(metrics, sigmas, truth.shape[0], tuple(truth.shape[-2:]), module.sr_scale,
                               patch, steps.replace("  ", " "))
    out_dir = Path(out_dir)
    write_comparison(out_dir, "heldout_comparison.json", truth, metrics, summary)
    grid = save_comparison_grid(decodes, out_dir / "heldout_grid.png", n=grid_crops)
    pick = spread(html_crops, truth.shape[0])
    images, labels = {}, {}
    for sigma, d in decodes.items():
        for name, label in (("baseline", BASELINE), ("pid", "PiD")):
            images[f"{name}_{sigma_tag(sigma)}"] = d[name][pick]
            labels[f"{name}_{sigma_tag(sigma)}"] = f"{label}, σ = {sigma:g}"
    images["ground_truth"], labels["ground_truth"] = truth[pick], "ground truth"
    page = write_html(images, labels, out_dir / "heldout", n=len(pick),
                      before=f"baseline_{sigma_tag(sigmas[-1])}", after=f"pid_{sigma_tag(sigmas[-1])}")
    log.info("held-out comparison: %s (native decode + bicubic | PiD | ground truth per σ), %s", grid, page)
    return metrics


def score_decodes(images: dict[str, torch.Tensor], extractor=None) -> dict[str, float]:
    """PSNR and Inception feature distance of every entry but "truth" against "truth"."""
    extractor = extractor if extractor is not None else inception_feature_extractor()
    truth = images["truth"]
    metrics = {}
    for name, pred in images.items():
        if name != "truth":
            metrics[f"heldout/{name}_psnr"] = float(psnr(pred, truth))
            dist = inception_feature_distance(pred, truth, extractor)
            metrics[f"heldout/{name}_inception_dist"] = float(dist)
    return metrics


def write_comparison(out_dir: str | Path, filename: str, truth: torch.Tensor, metrics: dict,
                     summary: str) -> Path:
    """Print the summary and write it with the metrics to ``out_dir/filename`` (JSON)."""
    print(summary, flush=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / filename
    path.write_text(json.dumps({"crops": truth.shape[0], "size": tuple(truth.shape[-2:]), **metrics,
                                "summary": summary}, indent=2))
    return path
