"""Held-out comparison after training: PiD's decode vs "native decode + bicubic" on validation crops.

Both start from the same latent of the same bicubic-downsampled crop, clean (σ = 0) and noised as an
LDM stopped early would leave it (σ = 0.4, :func:`pid.diffusion.noising.noise_latent`, one seeded noise
shared by both decoders). Both are scored against the ground-truth crop with the verdict measures of
:mod:`pid.eval.panel` (fidelity: PSNR, SSIM, HaarPSI, Inception feature distance, LR consistency;
realism: KID, FID, BRISQUE; artefacts: excess grain, excess blockiness on the network's patch grid), and
the verdicts follow the one rule of :mod:`pid.eval.verdict`: per family, paired bootstrap intervals, the
sample floor, and no measure that prefers the baseline plus grain on these crops.

With ``max_crops`` the crops are drawn across the validation images in proportion (seeded,
:func:`pid.eval.sample.representative_indices`), not taken from the first images.
Writes ``heldout_comparison.json``, ``heldout_grid.png`` (per σ, rows of native decode + bicubic | PiD |
ground truth) and ``heldout/compare.html``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path

import torch

from pid.nn.pixel_dit import network_patch_size
from pid.utils.images import to_signed, to_uint8, upsample

log = logging.getLogger(__name__)

BASELINE = "native decode + bicubic"


def sigma_tag(sigma: float) -> str:
    """Metric-key suffix of a latent noise level: 0 → "s0", 0.4 → "s0.4"."""
    return f"s{float(sigma):g}"


@torch.no_grad()
def decode_heldout(module, loader, ema=None, num_steps: int | None = None, seed: int = 0,
                   sigma: float = 0.0) -> dict[str, torch.Tensor]:
    """Ground truth, baseline and PiD decodes (float [-1, 1], CPU) for every crop of ``loader`` (a
    DataLoader; cap it with :func:`heldout_loader`).

    With ``sigma`` > 0 the latent is noised once (seeded) and both decoders see the same noisy latent;
    PiD is told the level.
    """
    from pid.diffusion.noising import noise_latent

    truth, baseline, decoded = [], [], []
    generator = torch.Generator().manual_seed(seed)
    latent_noise = torch.Generator().manual_seed(seed + 1)
    was_training = module.training
    last = time.monotonic()
    log.info("held-out comparison at σ = %g: decoding %d crops", sigma, len(loader.dataset))
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
    finally:
        module.train(was_training)
    out = {"truth": torch.cat(truth), "baseline": torch.cat(baseline), "pid": torch.cat(decoded)}
    return out


def judge_decodes(images: dict[str, torch.Tensor], sr_scale: int, patch: int, pairs: list[tuple[str, str]],
                  labels: dict[str, str], extractor=None, seed: int = 0, panel=None, excluded=None):
    """Verdicts (:meth:`pid.eval.panel.Panel.judge`) for ``images`` = {"truth", "baseline", decoders...}
    (float [-1, 1], aligned crops); ``pairs`` and the returned names use ``labels`` (name → printed name).
    Returns (judgement, metrics ``heldout/<name>_<measure>`` with the printed values)."""
    from pid.eval.panel import Panel

    truth = images["truth"]
    panel = panel if panel is not None else Panel(truth, sr_scale, patch, extractor=extractor)
    outputs = {labels[k]: v for k, v in images.items() if k != "truth"}
    judgement = panel.judge(outputs, [(labels[a], labels[b]) for a, b in pairs], labels["baseline"], seed,
                            excluded)
    metrics = {}
    for name in outputs:
        key = next(k for k, v in labels.items() if v == name)
        metrics.update({f"heldout/{key}_{m}": v for m, v in judgement.shown(name).items()})
    return judgement, metrics


def measures_table(judgement, names: list[str], width: int = 26, indent: str = "  ") -> list[str]:
    """Rows of the printed values of every verdict measure for each of ``names`` (a judgement's decoders)."""
    measures = [m for m in judgement.measures if any(m.key in judgement.evidence[n] for n in names)]
    widths = [max(len(m.label) + 2, 10) for m in measures]
    rows = [f"{indent}{'decoder':<{width}}" + "".join(f"{m.label:>{w}}" for m, w in zip(measures, widths))]
    for name in names:
        ev = judgement.evidence[name]
        cells = [m.format(ev[m.key].value()) if m.key in ev else "–" for m in measures]
        rows.append(f"{indent}{name:<{width}}" + "".join(f"{c:>{w}}" for c, w in zip(cells, widths)))
    return rows


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


def heldout_loader(datamodule, max_crops: int | None, seed: int = 0):
    """The validation loader, or, with ``max_crops``, one over a representative draw of that many crops
    (:func:`pid.eval.sample.representative_indices`: across images, seeded). Returns (loader, crop keys)."""
    from torch.utils.data import DataLoader, Subset

    from pid.eval.sample import representative_indices

    loader = datamodule.val_dataloader()
    ds = getattr(loader, "dataset", None)
    if ds is None:
        raise TypeError(f"the held-out comparison needs the datamodule's val_dataloader() to be a DataLoader "
                        f"over a dataset of crops, got {type(loader).__name__}")
    keys = ds.crop_keys() if hasattr(ds, "crop_keys") else [str(ds[i].get("key", i)) for i in range(len(ds))]
    idx = representative_indices(keys, max_crops, seed=seed)
    if len(idx) == len(ds):
        return loader, keys
    return DataLoader(Subset(ds, idx), batch_size=loader.batch_size, shuffle=False,
                      num_workers=loader.num_workers), [keys[i] for i in idx]


def compare_on_heldout(module, datamodule, ema=None, out_dir: str | Path = ".", num_steps: int | None = None,
                       seed: int = 0, max_crops: int | None = None, sigmas=(0.0, 0.4),
                       grid_crops: int = 6, html_crops: int = 12, extractor=None) -> dict[str, float]:
    """Score both decoders on the validation crops (all, or ``max_crops`` drawn across the images) at each
    latent noise level in ``sigmas``; print the measures and the verdicts per family, write the JSON, the
    grid PNG and the HTML page. Returns the metrics.

    ``extractor``: the Inception feature extractor (default: the offline FID Inception)."""
    from pid.eval.panel import Panel, combine_checks
    from pid.eval.report import write_html
    from pid.eval.sample import count_line

    datamodule.setup("validate")
    sigmas = tuple(float(s) for s in sigmas)
    patch = network_patch_size(module)
    loader, keys = heldout_loader(datamodule, max_crops, seed)
    labels = {"baseline": BASELINE, "pid": "PiD"}
    metrics: dict[str, float] = {}
    decodes: dict[float, dict[str, torch.Tensor]] = {}
    panel = None
    steps = f"{num_steps or module.sampling['num_steps']} {module.sampling.get('sampler', '')} steps"
    steps = steps.replace("  ", " ")
    lines, verdicts, checks = [], {}, []
    for sigma in sigmas:
        start = time.perf_counter()
        images = decode_heldout(module, loader, ema, num_steps, seed, sigma=sigma)
        decoded_s = time.perf_counter() - start
        log.info("held-out comparison at σ = %g: %d crops decoded in %.0f s; scoring them", sigma,
                 images["truth"].shape[0], decoded_s)
        if panel is None:
            panel = Panel(images["truth"], module.sr_scale, patch, extractor=extractor)
        outputs = {BASELINE: images["baseline"], "PiD": images["pid"]}
        checks.append(panel.grain_exclusions(outputs, [("PiD", BASELINE)], BASELINE, seed))
        log.info("held-out comparison at σ = %g: scored in %.0f s", sigma,
                 time.perf_counter() - start - decoded_s)
        decodes[sigma] = images
    for check, (sigma, images) in zip(checks, decodes.items()):
        judgement, scored = judge_decodes(images, module.sr_scale, patch, [("pid", "baseline")], labels,
                                          seed=seed, panel=panel, excluded=combine_checks(check, checks))
        suffix = "_" + sigma_tag(sigma)
        metrics.update({k + suffix: v for k, v in scored.items()})
        for o in judgement.verdicts[0].outcomes:
            metrics[f"heldout/pid_ahead_{o.measure.key}{suffix}"] = float(o.winner == "PiD")
        verdicts[sigma_tag(sigma)] = judgement.as_dict()
        lines += [f"  σ = {sigma:g}:"] + measures_table(judgement, [BASELINE, "PiD"]) + judgement.lines()
    truth = decodes[sigmas[0]]["truth"]
    if 0.0 in decodes:  # the σ = 0 numbers also under the keys of the earlier single-σ report
        for m in ("psnr", "inception_dist"):
            for name in ("pid", "baseline"):
                metrics[f"heldout/{name}_{m}"] = metrics[f"heldout/{name}_{m}_s0"]
    size = tuple(truth.shape[-2:])
    header = (f"held-out comparison: {count_line(keys)}, {size[0]}x{size[1]} (sr {module.sr_scale}x), "
              f"PiD ({steps}) vs {BASELINE}; verdicts per family, each measure's paired 95 % bootstrap "
              "interval (pid/eval/verdict.py):")
    summary = "\n".join([header, *lines])
    out_dir = Path(out_dir)
    write_comparison(out_dir, "heldout_comparison.json", truth, metrics, summary,
                     extra={"images": len({k.split("@")[0] for k in keys}), "verdicts": verdicts})
    grid = save_comparison_grid(decodes, out_dir / "heldout_grid.png", n=grid_crops)
    pick = spread(html_crops, truth.shape[0])
    images, html_labels = {}, {}
    for sigma, d in decodes.items():
        for name, label in (("baseline", BASELINE), ("pid", "PiD")):
            images[f"{name}_{sigma_tag(sigma)}"] = d[name][pick]
            html_labels[f"{name}_{sigma_tag(sigma)}"] = f"{label}, σ = {sigma:g}"
    images["ground_truth"], html_labels["ground_truth"] = truth[pick], "ground truth"
    page = write_html(images, html_labels, out_dir / "heldout", n=len(pick),
                      before=f"baseline_{sigma_tag(sigmas[-1])}", after=f"pid_{sigma_tag(sigmas[-1])}")
    log.info("held-out comparison: %s (native decode + bicubic | PiD | ground truth per σ), %s", grid, page)
    return metrics


def write_comparison(out_dir: str | Path, filename: str, truth: torch.Tensor, metrics: dict,
                     summary: str, extra: dict | None = None) -> Path:
    """Print the summary and write it with the metrics (and ``extra``) to ``out_dir/filename`` (JSON)."""
    print(summary, flush=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / filename
    path.write_text(json.dumps({"crops": truth.shape[0], "size": tuple(truth.shape[-2:]), **(extra or {}),
                                **metrics, "summary": summary}, indent=2, default=float))
    return path
