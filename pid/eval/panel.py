"""The measures pid's verdicts rest on, per family (:mod:`pid.eval.verdict` holds the rule itself).

Every measure is scored per crop against the crop's own ground truth (or, for set measures, recomputed
from per-crop statistics on each bootstrap resample), so two decoders are compared on the same crops:

fidelity to the input
    PSNR (capped at the 8-bit quantisation floor, :data:`pid.eval.functional.PSNR_CAP_DB`), SSIM, HaarPSI,
    the Inception feature distance (‖f(x̂) − f(x)‖², FID Inception pool features), and **LR consistency**:
    the output taken back down to the low-res input's size (the same bicubic, antialiased ↓ that made the
    input, :func:`pid.utils.images.downsample`) against that input, in PSNR — the fidelity measure of the
    super-resolution literature (e.g. SR3, Saharia et al. 2022, §4.2 "consistency").
realism
    KID×1e3 (unbiased MMD² on FID Inception features, Bińkowski et al. 2018) of the crops, or of their
    native-resolution tiles (patch-KID; crops are the resampling units, their tiles move together), FID
    (shown; never ranks below 10,000 samples), NIQE (outputs ≥ 193 px) and BRISQUE (no-reference, per crop).
artefacts
    **excess grain**: the output's noise level over the ground truth's, max(0, log(σ̂ / σ̂_GT)) per crop with
    σ̂ the wavelet noise estimate of Donoho & Johnstone (1994) (:func:`skimage.restoration.estimate_sigma`),
    shown as the geometric-mean ratio (1: no more noise than the ground truth); **seams**: the luma gradient
    energy across the network's patch grid minus that inside its patches (white noise adds the same to both,
    so grain neither hides nor fakes seams), its excess over the ground truth's in units of the ground
    truth's inside energy, max(0, ·) (:func:`pid.eval.functional.blockiness_terms`; 0: no more seams than
    the ground truth). Both count only what exceeds the ground truth: missing texture is blur, which the
    other families measure.

:class:`Panel` is bound to one set of ground-truth crops (their features and statistics are computed once)
and turns any decoder's outputs on those crops into ``{measure key: Evidence}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from pid.eval.verdict import (EXCLUDED, GRAIN_SIGMA, Evidence, Measure, Verdicts, add_grain, grain_exclusions,
                              judge)


_FID_FLOOR = ("FID on 2,048-d Inception features is biased below 10,000 samples (Heusel et al. 2017); "
              "KID ranks instead")

MEASURES: tuple[Measure, ...] = (
    Measure("psnr", "PSNR", "fidelity", "higher", ".2f"),
    Measure("ssim", "SSIM", "fidelity", "higher", ".3f"),
    Measure("haarpsi", "HaarPSI", "fidelity", "higher", ".3f"),
    Measure("inception_dist", "Inception dist", "fidelity", "lower", ".1f"),
    Measure("lr_psnr", "LR-PSNR", "fidelity", "higher", ".2f"),
    Measure("kid", "KID×1e3", "realism", "lower", ".2f"),
    Measure("fid", "FID", "realism", "lower", ".1f", min_samples=10_000, floor_reason=_FID_FLOOR,
            resamples=100),
    Measure("niqe", "NIQE", "realism", "lower", ".2f"),
    Measure("brisque", "BRISQUE", "realism", "lower", ".1f"),
    Measure("grain", "grain/GT", "artefacts", "lower", ".2f", show=math.exp),
    Measure("blockiness", "seams", "artefacts", "lower", ".3f"),
)
BY_KEY = {m.key: m for m in MEASURES}


def noise_sigma(images: torch.Tensor) -> torch.Tensor:
    """(B,) float64 wavelet noise estimate σ̂ of each image (in [-1, 1] units), averaged over RGB."""
    from skimage.restoration import estimate_sigma

    from pid.eval.images import as_metric_images

    x = as_metric_images(images, "double").permute(0, 2, 3, 1).cpu().numpy()
    return torch.tensor([float(estimate_sigma(np.ascontiguousarray(img), channel_axis=-1,
                                              average_sigmas=True)) for img in x], dtype=torch.float64)


def _kid_stat(feats: torch.Tensor, ref: torch.Tensor, unit: torch.Tensor, degree: int = 3, coef: float = 1.0):
    """Set statistic: ×1e3 unbiased MMD² (polynomial kernel, as KID) of ``feats`` vs ``ref`` (aligned
    (N, d) patch features), with patch ``i`` weighted by its crop's (``unit[i]``) bootstrap count."""
    d = feats.shape[1]
    kxx = (feats @ feats.T / d + coef) ** degree
    kyy = (ref @ ref.T / d + coef) ** degree
    kxy = (feats @ ref.T / d + coef) ** degree

    def within(k: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        total = ((c @ k) * c).sum(1) - (c.square() * k.diagonal()).sum(1)
        pairs = c.sum(1).square() - c.square().sum(1)  # 0 when one patch is drawn: no pair, no estimate
        return torch.where(pairs > 0, total / pairs.clamp_min(1e-12), torch.full_like(total, float("nan")))

    def stat(w: torch.Tensor) -> torch.Tensor:
        c = w[:, unit]
        cross = ((c @ kxy) * c).sum(1) / c.sum(1).square().clamp_min(1e-12)
        return 1e3 * (within(kxx, c) + within(kyy, c) - 2 * cross)

    return stat


def _fid_stat(feats: torch.Tensor, ref: torch.Tensor, unit: torch.Tensor):
    """Set statistic: FID of ``feats`` vs ``ref`` with patch ``i`` weighted by its crop's bootstrap count
    (weighted means and covariances; :func:`pid.eval.frechet.frechet_distance` at unit weights)."""
    from pid.eval.frechet import frechet_distance

    def weighted(x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu = (c @ x) / c.sum()
        xc = x - mu
        return mu, (xc.T * c) @ xc / (c.sum() - 1)

    def one(c: torch.Tensor) -> float:
        if float(c.sum()) < 2 or len(feats) < 2:
            return float("nan")
        if bool((c == 1).all()):
            return float(frechet_distance(feats, ref))
        (m1, s1), (m2, s2) = weighted(feats, c), weighted(ref, c)
        e1, v1 = torch.linalg.eigh(s1)
        root = (v1 * e1.clamp_min(0).sqrt()) @ v1.T
        cross = torch.linalg.eigvalsh(root @ s2 @ root).clamp_min(0).sqrt().sum()
        return float((m1 - m2).square().sum() + s1.trace() + s2.trace() - 2 * cross)

    return lambda w: torch.tensor([one(c) for c in w[:, unit]], dtype=torch.float64)


class Panel:
    """The verdict measures on one set of ground-truth crops.

    Args:
        truth: (N, 3, H, W) ground-truth crops in [-1, 1].
        sr_scale: output / input size; the LR input is ``downsample(truth, sr_scale)``.
        patch: the network's patch size in output pixels (the blockiness grid).
        kid_patch: side of the native-resolution tiles of each crop that KID/FID score (then named patch-KID
            and patch-FID and counted in patches); None: the whole crops (their Inception features are
            shared with the Inception distance, one forward per crop).
        extractor: the FID Inception (default: the offline one of :mod:`pid.eval.inception`).
        measures: keys of :data:`MEASURES` to score (default: all that apply at this size: NIQE needs
            ≥ 193 px, blockiness a crop larger than ``patch``, KID/FID crops of at least ``kid_patch``).
        lr: the low-res inputs (N, 3, H/s, W/s); default: the bicubic ↓ of ``truth``.
    """

    def __init__(self, truth: torch.Tensor, sr_scale: int, patch: int, kid_patch: int | None = None,
                 extractor=None,
                 measures: list[str] | None = None, lr: torch.Tensor | None = None):
        from pid.eval.functional import inception_features
        from pid.eval.images import as_metric_images, grid_patches
        from pid.eval.noref import NIQE_MIN_SIDE
        from pid.utils.images import downsample

        self.truth = as_metric_images(truth).cpu()
        n, _, h, w = self.truth.shape
        self._cache: dict[int, tuple[torch.Tensor, dict]] = {}
        self._grained: dict[tuple, tuple[torch.Tensor, dict]] = {}
        self.sr_scale, self.patch = int(sr_scale), int(patch)
        self.kid_patch = int(kid_patch) if kid_patch else max(h, w)
        self.n = n
        applicable = {m.key for m in MEASURES}
        if min(h, w) < NIQE_MIN_SIDE:
            applicable.discard("niqe")
        if min(h, w) <= self.patch:
            applicable.discard("blockiness")
        if min(h, w) < self.kid_patch:
            applicable -= {"kid", "fid"}
        if measures is not None:
            unknown = set(measures) - set(BY_KEY)
            if unknown:
                raise ValueError(f"unknown verdict measure(s) {sorted(unknown)}; "
                                 f"choose from {sorted(BY_KEY)}")
            applicable &= set(measures)
        self.keys = [m.key for m in MEASURES if m.key in applicable]
        self.measures = [BY_KEY[k] for k in self.keys]
        self.lr = downsample(self.truth, self.sr_scale) if lr is None else as_metric_images(lr).cpu()
        if self._uses_inception():
            from pid.eval.inception import inception_feature_extractor

            self.extractor = extractor if extractor is not None else inception_feature_extractor()
            self._features = lambda x: inception_features(x, self.extractor).cpu()
            self.truth_feats = self._features(self.truth)
            if "kid" in self.keys or "fid" in self.keys:
                self.per_crop = len(grid_patches(self.truth[:1], self.kid_patch))
                self.patch_unit = torch.arange(n).repeat_interleave(self.per_crop)
                whole = self.per_crop == 1 and self.kid_patch >= max(h, w)
                self.truth_patch_feats = (self.truth_feats if whole
                                          else self._features(grid_patches(self.truth, self.kid_patch)))
                if self.per_crop > 1:  # tiles of each crop at native resolution: counted as patches
                    self.measures = [replace(m, label=f"patch-{m.label}", unit="patches")
                                     if m.key in ("kid", "fid") else m for m in self.measures]
        if "grain" in self.keys:
            self.truth_sigma = noise_sigma(self.truth)
        if "blockiness" in self.keys:
            from pid.eval.functional import blockiness_terms

            self.truth_block = self._blocks(self.truth)
            self.truth_inside = blockiness_terms(self.truth, self.patch)[1]

    def _blocks(self, images: torch.Tensor) -> torch.Tensor:
        """(N,) per crop: the mean squared luma gradient across the patch grid minus that inside it. White
        noise adds the same 2σ² to both, so grain neither hides seams nor reads as them."""
        from pid.eval.functional import blockiness_terms

        across, inside = blockiness_terms(images, self.patch)
        return across - inside

    def _uses_inception(self) -> bool:
        return bool({"inception_dist", "kid", "fid"} & set(self.keys))

    def evidence(self, images: torch.Tensor, keep: bool = True) -> dict[str, Evidence]:
        """``{measure key: Evidence}`` for outputs aligned with the ground-truth crops (same N, size).
        ``keep``: remember it for these same outputs (held by reference: only for outputs the caller keeps
        anyway)."""
        from pid.eval import functional as F
        from pid.eval.images import as_metric_images, grid_patches
        from pid.utils.images import downsample

        cached = self._cache.get(id(images))
        if cached is not None and cached[0] is images:  # the same output judged in another pair
            return cached[1]
        x = as_metric_images(images).cpu()
        if x.shape != self.truth.shape:
            raise ValueError(f"outputs {tuple(x.shape)} do not match the ground-truth crops "
                             f"{tuple(self.truth.shape)}")
        n, out = self.n, {}
        keys = set(self.keys)
        if "psnr" in keys:
            values = F.psnr(x, self.truth, reduction="none")
            capped = F.psnr_capped(values)
            out["psnr"] = Evidence(n, values, note=f"{capped} crop(s) at the {F.PSNR_CAP_DB:.1f} dB cap"
                                   if capped else "")
        if "ssim" in keys:
            out["ssim"] = Evidence(n, F.ssim(x, self.truth, reduction="none"))
        if "haarpsi" in keys:
            out["haarpsi"] = Evidence(n, F.haarpsi(x, self.truth, reduction="none"))
        if "lr_psnr" in keys:
            out["lr_psnr"] = Evidence(n, F.psnr(downsample(x, self.sr_scale), self.lr, reduction="none"))
        if keys & {"inception_dist", "kid", "fid"}:
            tiles = not (self.per_crop == 1 and self.kid_patch >= max(x.shape[-2:])) if hasattr(
                self, "per_crop") else False
            whole = self._features(x) if "inception_dist" in keys or not tiles else None
            if "inception_dist" in keys:
                out["inception_dist"] = Evidence(n, (whole - self.truth_feats).square().sum(1))
            if keys & {"kid", "fid"}:
                feats = self._features(grid_patches(x, self.kid_patch)) if tiles else whole
                ref, unit = self.truth_patch_feats, self.patch_unit
                if "kid" in keys:
                    out["kid"] = Evidence(n, stat=_kid_stat(feats, ref, unit), samples=len(feats))
                if "fid" in keys:
                    out["fid"] = Evidence(n, stat=_fid_stat(feats, ref, unit), samples=len(feats))
        if "niqe" in keys:
            from pid.eval.noref import niqe_available, niqe_scores

            if niqe_available()[0]:
                out["niqe"] = Evidence(n, niqe_scores(x))
        if "brisque" in keys:
            from pid.eval.noref import brisque_available, brisque_scores

            if brisque_available()[0]:
                out["brisque"] = Evidence(n, brisque_scores(x))
        if "grain" in keys:
            sigma = noise_sigma(x)
            excess = torch.log(sigma.clamp_min(1e-6) / self.truth_sigma.clamp_min(1e-6)).clamp_min(0)
            out["grain"] = Evidence(n, excess)
        if "blockiness" in keys:
            excess = self._blocks(x)

            def seams(w, own=excess):  # the excess over the ground truth's, in units of its inside energy
                extra = w @ (own - self.truth_block)
                return (extra / (w @ self.truth_inside).clamp_min(1e-12)).clamp_min(0)

            out["blockiness"] = Evidence(n, stat=seams)
        if keep:
            self._cache[id(images)] = (images, out)
        return out

    def judge(self, outputs: dict[str, torch.Tensor], pairs: list[tuple[str, str]], baseline: str,
              seed: int = 0, excluded: tuple[set[str], list[float]] | None = None) -> Judgement:
        """Verdicts for each (a, b) of ``pairs`` (names of ``outputs``, aligned with the ground truth), after
        the grain check on ``outputs[baseline]`` (:meth:`grain_exclusions`), or with ``excluded`` = (keys,
        grain levels) from the checks of related comparisons (the same crops at several σ)."""
        names = {baseline} | {name for pair in pairs for name in pair}
        missing = names - set(outputs)
        if missing:
            raise KeyError(f"no outputs named {sorted(missing)} (have {sorted(outputs)})")
        evidence = {name: self.evidence(outputs[name]) for name in outputs if name in names}
        if excluded is None:
            excluded = self.grain_exclusions(outputs, pairs, baseline, seed)
        if isinstance(excluded, GrainCheck):
            excluded = excluded.keys(), excluded.levels()
        keys, levels = excluded
        verdicts = [judge(self.measures, evidence[a], evidence[b], (a, b), keys, seed) for a, b in pairs]
        return Judgement(verdicts, set(keys), evidence, self.measures, [float(v) for v in levels])

    def grain_exclusions(self, outputs: dict[str, torch.Tensor], pairs: list[tuple[str, str]], baseline: str,
                         seed: int = 0) -> GrainCheck:
        """The measures that reward grain, per grain level tried, for judging ``pairs`` against
        ``outputs[baseline]``: grain of σ = 0.1 and, where a judged output is grainier, grain matched to its
        excess noise (:meth:`matched_grain`). Combine the checks of related comparisons with
        :func:`combine_checks`."""
        judged = [outputs[n] for pair in pairs for n in pair if n != baseline]
        levels = sorted({GRAIN_SIGMA, *(self.matched_grain(outputs[baseline], x) for x in judged)})
        base = self.evidence(outputs[baseline])
        by_level = {sigma: self.grain_check(outputs[baseline], seed, base, sigma)[0] for sigma in levels}
        return GrainCheck(by_level)

    @staticmethod
    def matched_grain(baseline: torch.Tensor, output: torch.Tensor) -> float:
        """The std of white grain that would give ``baseline`` the noise level ``output`` has beyond it
        (median over crops of √(σ̂_out² − σ̂_base²), to 2 significant digits, at most 0.5) — the second level
        of the grain check, so a measure cannot favour a decoder for grain stronger than σ = 0.1 either;
        :data:`GRAIN_SIGMA` when the output is no grainier."""
        excess = (noise_sigma(output).square() - noise_sigma(baseline).square()).clamp_min(0).sqrt().median()
        level = float(f"{min(float(excess), 0.5):.2g}")
        return level if level > GRAIN_SIGMA else GRAIN_SIGMA

    def grain_check(self, baseline: torch.Tensor, seed: int = 0,
                    baseline_evidence: dict[str, Evidence] | None = None, sigma: float = GRAIN_SIGMA):
        """The measures that prefer ``baseline`` plus grain of std ``sigma`` to ``baseline`` (two seeded
        draws, :func:`pid.eval.verdict.grain_exclusions`). Returns (their keys, the first grained draw's
        evidence)."""
        base = baseline_evidence if baseline_evidence is not None else self.evidence(baseline)
        grained = []
        for k in (0, 1):  # the same draw of the same baseline is scored once per panel
            key = (id(baseline), float(sigma), seed + k)
            if key not in self._grained or self._grained[key][0] is not baseline:
                grain = self.evidence(add_grain(baseline, sigma, seed=seed + k), keep=False)
                self._grained[key] = (baseline, grain)
            grained.append(self._grained[key][1])
        return grain_exclusions(self.measures, base, *grained), grained[0]


@dataclass
class GrainCheck:
    """The measures one grain check excluded, per grain level (σ on [-1, 1])."""

    by_level: dict[float, set[str]]

    def keys(self) -> set[str]:
        return set().union(*self.by_level.values())

    def levels(self) -> list[float]:
        return sorted(self.by_level)


def combine_checks(own: GrainCheck, related: list[GrainCheck]) -> tuple[set[str], list[float]]:
    """(excluded keys, levels) for one comparison among several on the same crops (e.g. one per σ): its own
    check at every level, plus what the fixed-level check (σ = 0.1) excluded in any of them — a measure that
    rewards grain at this size on these crops does so at every σ; grain matched to another comparison's
    decoder says nothing about this one."""
    keys = own.keys() | set().union(*(c.by_level.get(GRAIN_SIGMA, set()) for c in related))
    return keys, own.levels()


@dataclass
class Judgement:
    """The verdicts of :meth:`Panel.judge`: one :class:`Verdicts` per pair, the measures excluded for
    rewarding grain, and every decoder's evidence (``shown(name)`` gives its printed values)."""

    verdicts: list[Verdicts]
    excluded: set[str]
    evidence: dict[str, dict[str, Evidence]]
    measures: list[Measure]
    grain_levels: list[float] = field(default_factory=lambda: [GRAIN_SIGMA])

    def shown(self, name: str) -> dict[str, float]:
        """``{measure key: value as printed}`` (e.g. ratios, not their logs) for one decoder."""
        out = {}
        for m in self.measures:
            if m.key in self.evidence[name]:
                v = self.evidence[name][m.key].value()
                out[m.key] = m.show(v) if m.show and math.isfinite(v) else v
        return out

    def lines(self) -> list[str]:
        out = []
        for v in self.verdicts:
            out.append(f"  -> {v.a} vs {v.b}:")
            out += v.lines(indent="     ")
        if self.excluded:
            labels = ", ".join(m.label for m in self.measures if m.key in self.excluded)
            levels = " and ".join(f"{v:g}" for v in self.grain_levels)
            out.append(f"  {labels}: {EXCLUDED} (they prefer the baseline + Gaussian grain of σ = {levels} "
                       "on [-1, 1] to the baseline on these crops; shown, never used to name a winner)")
        return out

    def as_dict(self) -> dict:
        return {"excluded_rewards_grain": sorted(self.excluded), "grain_sigmas": self.grain_levels,
                "verdicts": [v.as_dict() for v in self.verdicts]}
