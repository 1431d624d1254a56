"""Evaluation entry point: `python -m pid.evaluate ckpt=PATH [overrides]` (or `make eval ckpt=PATH`).

Compares PiD (teacher at N steps, DMD2 student at 4, an early-exit sweep over σ) with "native decode +
upscaler" cascades (bicubic, Lanczos, the diffusion-SR model of `exp=quickstart_sr`, spandrel upscalers)
on one evaluation set, and writes results.md/.csv, plots and compare.html (see pid/eval/report.py).
Config: conf/eval.yaml.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from pid.utils.errors import MissingWeightsError, PiDConfigError

log = logging.getLogger("pid.evaluate")


# --- inputs ---------------------------------------------------------------------------------------------
def resolve_ckpt(path: str | None, key: str) -> Path | None:
    """A checkpoint path; a glob resolves to its newest match. Missing → MissingWeightsError naming ``key``."""
    if path in (None, "", "null"):
        return None
    path = str(path)
    if any(c in path for c in "*?["):
        matches = sorted(glob.glob(path), key=os.path.getmtime)
        if not matches:
            raise MissingWeightsError(f"checkpoint for `{key}`", key, "a pid_decoder.safetensors export",
                                      "`make train` (quickstart) or a run of pid.train", path=path)
        return Path(matches[-1])
    if not Path(path).is_file():
        raise MissingWeightsError(f"checkpoint for `{key}`", key, "a pid_decoder.safetensors export", path=path)
    return Path(path)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_eval_set(cfg: DictConfig, decoder) -> dict:
    """{"truth": (N,3,H,W) [-1,1] or None, "z": (N,C,h,w), "sigma": float, "captions": [...], "keys": [...]}."""
    from pid.utils.images import downsample, to_signed

    d = cfg.data
    sr = decoder.sr_scale
    if d.kind == "latents":
        from pid.decode import read_latent

        z, sigma = read_latent(d.latents)
        cap_file = Path(str(d.latents)).with_suffix(".json")
        caps = json.loads(cap_file.read_text()) if cap_file.is_file() else [d.default_caption] * len(z)
        n = min(len(z), d.max_images or len(z))
        return {"truth": None, "z": z[:n].float(), "sigma": float(sigma or 0.0), "captions": list(caps)[:n],
                "keys": [f"latent_{i}" for i in range(n)]}
    if d.crop_size % (sr * decoder.latent.down_factor):
        raise PiDConfigError(f"data.crop_size={d.crop_size} must be a multiple of sr_scale × latent down factor "
                             f"= {sr * decoder.latent.down_factor}")
    if d.kind == "folder":
        from pid.data.image_folder import FixedCropDataset

        ds = FixedCropDataset(str(d.root), d.crop_size, d.crops_per_image, select=d.select)
    elif d.kind == "shards":
        from pid.data.shard_val import FixedCropShardDataset

        root = str(d.root)
        shards = sorted(glob.glob(root if root.endswith(".tar") or "*" in root else f"{root}/**/*.tar",
                                  recursive=True))
        ds = FixedCropShardDataset(shards, d.crop_size, d.crops_per_image)
    else:
        raise PiDConfigError(f"data.kind must be folder, shards or latents, got {d.kind!r}")
    n = len(ds) if not d.max_images else min(len(ds), int(d.max_images))
    if n == 0:
        raise PiDConfigError(f"data.root={d.root}: no image holds a {d.crop_size}px crop")
    items = [ds[i] for i in range(n)]
    truth = to_signed(torch.stack([it["image"] for it in items]))
    z = torch.cat([decoder.encode(downsample(truth[i:i + d.batch_size], sr)).cpu()
                   for i in range(0, n, d.batch_size)])
    captions = [it.get("caption") or d.default_caption for it in items]
    return {"truth": truth, "z": z.float(), "sigma": 0.0, "captions": captions, "keys": [it["key"] for it in items]}


# --- decoding -------------------------------------------------------------------------------------------
def decode_all(method, z: torch.Tensor, base_sigma: float, xi: torch.Tensor, form: str, batch_size: int,
               device, seed: int) -> torch.Tensor:
    """Decode every latent with ``method`` (noised to method.sigma with the fixed noise ``xi`` first)."""
    from pid.diffusion.noising import noise_latent

    out = []
    sigma = method.sigma if method.family == "early_exit" else base_sigma
    for i in range(0, len(z), batch_size):
        zb = z[i:i + batch_size]
        if method.family == "early_exit" and method.sigma > 0:
            zb = noise_latent(zb, method.sigma, noise=xi[i:i + batch_size], form=form)
        g = torch.Generator().manual_seed(seed + i)
        out.append(method.run(zb.to(device), sigma, g).float().cpu())
    return torch.cat(out)


# --- metrics --------------------------------------------------------------------------------------------
class Scorer:
    """Every configured metric of one output set against the ground truth (features of the truth cached)."""

    def __init__(self, cfg: DictConfig, truth: torch.Tensor | None, captions: list[str], device,
                 groups: dict[str, torch.Tensor] | None = None):
        from pid.eval.clip_score import build_clip_scorer
        from pid.eval.inception import inception_feature_extractor
        from pid.eval.metrics import crop_positions
        from pid.eval.noref import brisque_available, niqe_available, qalign_scorer

        self.cfg, self.truth, self.captions, self.device = cfg, truth, captions, device
        self.groups = groups or {}
        self.notes: dict[str, str] = {}
        m = cfg.metrics
        self.extractor = inception_feature_extractor(m.inception_weights).to(device)
        self.patch = int(m.patch.size)
        self.positions = None
        self.ref = {}
        if truth is not None:
            h, w = truth.shape[-2:]
            self.positions = crop_positions(h, w, self.patch, int(m.patch.per_image), len(truth), int(m.patch.seed))
            self.ref = self._features(truth)
            n_patch, dim = self.ref["patch"].shape
            if n_patch < dim:
                self.notes["patch_kid"] = (
                    f"patch-FID is estimated from {n_patch} patches, fewer than the {dim} Inception dimensions: "
                    "its bias is large and can differ between methods. patch-KID (unbiased MMD², Bińkowski "
                    "et al. 2018) on the same patches is reported beside it; where the two disagree, the sample "
                    "is too small to call. Raise data.max_images / metrics.patch.per_image for a tighter FID")
        else:
            for k in ("fid", "kid", "patch_fid", "patch_kid", "psnr", "ssim", "lpips"):
                self.notes[k] = "no ground truth (data.kind=latents)"
        self.lpips = None
        if m.lpips_backbone:
            from pid.eval.metrics import LPIPSMetric

            self.lpips = LPIPSMetric(m.lpips_backbone)
        elif truth is not None:
            self.notes["lpips"] = "not configured (metrics.lpips_backbone=/path/alexnet-owt-7be5be79.pth)"
        self.niqe = bool(m.niqe) and niqe_available()[0]
        if m.niqe and not self.niqe:
            self.notes["niqe"] = niqe_available()[1]
        self.brisque = bool(m.brisque) and brisque_available()[0]
        if m.brisque and not self.brisque:
            self.notes["brisque"] = brisque_available()[1]
        elif not m.brisque:
            self.notes["brisque"] = "off"
        self.qalign = qalign_scorer(m.get("qalign"), device)
        if self.qalign is None:
            self.notes["qalign"] = "not configured (metrics.qalign.path=DIR: a local q-future/one-align snapshot)"
        self.clip = build_clip_scorer(cfg.clip.model_name, cfg.clip.pretrained,
                                      OmegaConf.to_container(cfg.clip.model_cfg) if cfg.clip.model_cfg else None,
                                      device=device)
        if self.clip is None:
            self.notes["clip"] = "not configured (clip.model_name + clip.pretrained: local open_clip weights)"

    def _features(self, images: torch.Tensor) -> dict:
        from pid.eval.metrics import inception_features, take_crops

        dev = self.device
        out = {"whole": inception_features(images.to(dev), self.extractor).cpu()} if self.cfg.metrics.fid else {}
        out["patch"] = inception_features(take_crops(images, self.positions, self.patch).to(dev), self.extractor).cpu()
        return out

    def __call__(self, images: torch.Tensor) -> dict:
        from pid.eval.detail import psnr
        from pid.eval.metrics import fid_from_features, kid_from_features, ssim
        from pid.eval.noref import brisque_scores, nanmean, niqe_scores, qalign_scores

        nan = float("nan")
        r = {k: nan for k in ("fid", "kid", "patch_fid", "patch_kid", "psnr", "ssim", "lpips", "niqe", "brisque",
                              "qalign", "clip")}
        if self.truth is not None:
            f = self._features(images)
            if "whole" in f:
                r["fid"] = fid_from_features(f["whole"], self.ref["whole"])
                kid = kid_from_features(f["whole"], self.ref["whole"], int(self.cfg.metrics.kid.subsets),
                                        int(self.cfg.metrics.kid.subset_size))
                r["kid"], r["kid_std"] = kid[0] * 1e3, kid[1] * 1e3
            r["patch_fid"] = fid_from_features(f["patch"], self.ref["patch"])
            # patch-KID: the unbiased MMD² on the same patches (FID's bias at small N differs by method)
            pkid = kid_from_features(f["patch"], self.ref["patch"], int(self.cfg.metrics.kid.subsets),
                                     int(self.cfg.metrics.kid.subset_size))
            r["patch_kid"], r["patch_kid_std"] = pkid[0] * 1e3, pkid[1] * 1e3
            if self.cfg.metrics.fidelity:
                r["psnr"] = float(psnr(images, self.truth))
                r["ssim"] = ssim(images, self.truth)
            if self.lpips is not None:
                r["lpips"] = self.lpips(images, self.truth)
        if self.niqe:
            r["niqe"] = nanmean(niqe_scores(images))
            if math.isnan(r["niqe"]) and min(images.shape[-2:]) < 193:
                self.notes["niqe"] = "needs outputs ≥193 px (data.crop_size)"
        if self.brisque:
            r["brisque"] = nanmean(brisque_scores(images))
        if self.qalign is not None:
            r["qalign"] = nanmean(qalign_scores(self.qalign, images))
        if self.clip is not None:
            r["clip"] = self.clip(images.to(self.device), self.captions)
        return r

    def by_group(self, images: torch.Tensor) -> dict[str, dict]:
        """Fidelity (PSNR, SSIM, LPIPS when configured) per group of ``data.groups``: {group: {n, psnr, ...}}."""
        from pid.eval.detail import psnr
        from pid.eval.metrics import ssim

        if self.truth is None or not self.cfg.metrics.fidelity:
            return {}
        out = {}
        for name, mask in self.groups.items():
            pred, gt = images[mask], self.truth[mask]
            out[name] = {"n": int(mask.sum()), "psnr": float(psnr(pred, gt)), "ssim": ssim(pred, gt)}
            if self.lpips is not None:
                out[name]["lpips"] = self.lpips(pred, gt)
        return out


# --- the run ---------------------------------------------------------------------------------------------
def evaluate(cfg: DictConfig) -> dict:
    from tqdm.auto import tqdm

    from pid.api import load_decoder
    from pid.eval import report
    from pid.eval.baselines import build_methods
    from pid.eval.latency import measure

    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    out_dir = Path(cfg.report.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    teacher_path = resolve_ckpt(cfg.ckpt, "ckpt")
    log.info("teacher: %s", teacher_path)
    teacher = load_decoder(teacher_path, device=device)
    student = sr_dec = None
    if cfg.methods.student.enabled and cfg.student_ckpt:
        student = load_decoder(resolve_ckpt(cfg.student_ckpt, "student_ckpt"), device=device, latent=teacher.latent)
    if cfg.methods.sr_cascade.enabled and cfg.sr_cascade_ckpt:
        sr_dec = load_decoder(resolve_ckpt(cfg.sr_cascade_ckpt, "sr_cascade_ckpt"), device=device)
        if sr_dec.latent.down_factor != 1 or sr_dec.latent.channels != 3 or sr_dec.sr_scale != teacher.sr_scale:
            raise PiDConfigError(f"sr_cascade_ckpt={cfg.sr_cascade_ckpt} is not an RGB-conditioned SR model at "
                                 f"sr_scale {teacher.sr_scale} (train it with `make train exp=quickstart_sr`)")

    data = load_eval_set(cfg, teacher)
    truth, z = data["truth"], data["z"]
    log.info("evaluation set: %d latents %s → outputs %s", len(z), tuple(z.shape[1:]),
             tuple(truth.shape[1:]) if truth is not None else "(no ground truth)")
    methods, skipped = build_methods(cfg, teacher, student, sr_dec, device)
    log.info("methods: %s | skipped: %s", ", ".join(m.name for m in methods),
             ", ".join(f"{s.name} ({s.reason})" for s in skipped) or "none")

    from pid.eval.metrics import group_masks

    scorer = Scorer(cfg, truth, data["captions"], device,
                    groups=group_masks(data["keys"], OmegaConf.to_container(cfg.data.get("groups") or {})))
    xi = torch.randn(z.shape, generator=torch.Generator().manual_seed(cfg.seed + 1))
    images, labels, rows = {}, {}, []
    if truth is not None:
        images["ground_truth"], labels["ground_truth"] = truth, "ground truth"
        gt = {"name": "ground_truth", "family": "reference", "label": "ground truth (reference)", "sigma": 0.0,
              **scorer(truth)}
        rows.append(gt)

    sizes = list(cfg.latency.sizes or [None])
    for method in tqdm(methods, desc="methods", unit="method", file=sys.stderr):
        t0 = time.perf_counter()
        out = decode_all(method, z, data["sigma"], xi, teacher.latent.noise_form, int(cfg.data.batch_size),
                         device, int(cfg.seed))
        row = {"name": method.name, "family": method.family, "label": method.label, "steps": method.steps,
               "sigma": method.sigma, "decode_s_total": time.perf_counter() - t0, **scorer(out)}
        if scorer.groups:
            row["by_group"] = scorer.by_group(out)
        if cfg.latency.enabled and method.family in cfg.latency.families:
            for size in sizes:
                zs = _latency_latent(z, size, teacher, int(cfg.latency.batch_size))
                t = measure(lambda: method.run(zs.to(device), 0.0, torch.Generator().manual_seed(0)), device,
                            int(cfg.latency.warmup), int(cfg.latency.runs))
                suffix = "" if size is None else f"@{size}"
                row[f"latency_ms{suffix}"] = t.median_ms
                row[f"latency_p10_ms{suffix}"], row[f"latency_p90_ms{suffix}"] = t.p10_ms, t.p90_ms
                row[f"peak_mem_mb{suffix}"], row["mem_kind"] = t.peak_mem_mb, t.mem_kind
            if sizes[0] is not None:  # the first size is the one in the main table
                for k in ("latency_ms", "latency_p10_ms", "latency_p90_ms", "peak_mem_mb"):
                    row[k] = row[f"{k}@{sizes[0]}"]
            row["latency_spread"] = f"{row['latency_p10_ms']:.1f}–{row['latency_p90_ms']:.1f}"
        rows.append(row)
        images[method.name], labels[method.name] = out, method.label
        log.info("%-24s %s", method.name, "  ".join(f"{k}={row[k]:.3g}" for k in
                                                     ("patch_fid", "patch_kid", "fid", "psnr", "niqe",
                                                      "latency_ms")
                                                     if isinstance(row.get(k), float) and not math.isnan(row[k])))

    summary = summarize(rows)
    header = (f"# PiD evaluation\n\nteacher `{teacher_path}`; student `{cfg.student_ckpt}`; SR cascade "
              f"`{cfg.sr_cascade_ckpt}`\n\n{len(z)} images, output "
              f"{tuple(images[next(iter(images))].shape[-2:])}, sr_scale {teacher.sr_scale}, device {device}, "
              f"patch-FID/KID on {cfg.metrics.patch.per_image} seeded {cfg.metrics.patch.size}² crops per image "
              f"(seed {cfg.metrics.patch.seed}); latency: median of {cfg.latency.runs} runs after "
              f"{cfg.latency.warmup} warm-up, batch {cfg.latency.batch_size}.\n\n" + "\n".join(f"**{s}**" for s in summary))
    skipped_d = [{"name": s.name, "family": s.family, "reason": s.reason} for s in skipped]
    md, csv_path = report.write_tables(rows, skipped_d, scorer.notes, out_dir, header)
    plots = [report.plot_quality_vs_latency(rows, out_dir / "quality_vs_latency.png"),
             report.plot_quality_vs_sigma(rows, out_dir / "quality_vs_sigma.png")]
    html = report.write_html({k: v for k, v in images.items() if not k.startswith("early_exit")}, labels, out_dir,
                             n=int(cfg.report.crops), before=cfg.report.before, after=cfg.report.after)
    if cfg.get("logger"):
        from pid.utils.loggers import instantiate_loggers

        report.log_to_wandb(instantiate_loggers(cfg.logger), rows, images, labels, [p for p in plots if p])
    for s in summary:
        print(s, flush=True)
    print(f"results: {md} | {csv_path} | {html}", flush=True)
    return {"rows": rows, "skipped": skipped_d, "notes": scorer.notes, "summary": summary, "out_dir": str(out_dir)}


def _latency_latent(z: torch.Tensor, size: int | None, decoder, batch_size: int = 1) -> torch.Tensor:
    """A latent of the latency batch size for output ``size`` (None: the evaluation set's first latent)."""
    if size is None:
        return z[:1].repeat(batch_size, 1, 1, 1)
    cell = decoder.sr_scale * decoder.latent.down_factor
    if size % cell:
        raise PiDConfigError(f"latency.sizes: {size} is not a multiple of {cell} (sr_scale × latent down factor)")
    return torch.randn(batch_size, z.shape[1], size // cell, size // cell, generator=torch.Generator().manual_seed(0))


def summarize(rows: list[dict]) -> list[str]:
    """The closing lines: PiD vs native + bicubic on patch-FID and on patch-KID; speed vs the diffusion-SR
    cascade."""
    by = {r["name"]: r for r in rows}
    pid_rows = [r for r in rows if r["family"] == "pid"]
    pid = next((r for r in pid_rows if r["name"].startswith("pid_student")), pid_rows[0] if pid_rows else None)
    out = []
    base = by.get("native_bicubic")
    for key, name, fmt in (("patch_fid", "patch-FID", ".2f"), ("patch_kid", "patch-KID×1e3", ".1f")):
        if pid and base and not math.isnan(pid.get(key, float("nan"))):
            better = pid[key] < base[key]
            out.append(f"{name}: {pid['label']} {pid[key]:{fmt}} vs native decode + bicubic "
                       f"{base[key]:{fmt}} → {'PiD wins' if better else 'native + bicubic wins'}")
    sr = next((r for r in rows if r["name"].startswith("sr_cascade")), None)
    if pid and sr and pid.get("latency_ms") and sr.get("latency_ms"):
        out.append(f"speed: {pid['label']} {pid['latency_ms']:.1f} ms vs {sr['label']} {sr['latency_ms']:.1f} ms → "
                   f"PiD is {sr['latency_ms'] / pid['latency_ms']:.2f}× "
                   f"{'faster' if sr['latency_ms'] > pid['latency_ms'] else 'slower (ratio < 1)'}")
    return out


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    try:
        evaluate(cfg)
    except (MissingWeightsError, PiDConfigError) as err:
        log.error("%s", err)
        sys.exit(2)


if __name__ == "__main__":
    main()
