"""The metrics of `make eval`, one small class each (the base class and the suite: pid/eval/registry.py).

Configured, in column order, under ``metrics:`` in conf/eval.yaml. Values are computed by the
functions of :mod:`pid.eval.functional`, :mod:`pid.eval.noref` and :mod:`pid.eval.clip_score`.
"""

from __future__ import annotations

import math

import torch

from pid.eval.registry import Column, EvalContext, Metric, nanmean

_NOT_CONFIGURED = "not configured"


class FID(Metric):
    """FID and KID×1e3 on whole images (the FID Inception resizes them to 299²), against the ground truth."""

    columns = (Column("fid", "FID", ".2f", "lower"), Column("kid", "KID×1e3", ".2f", "lower"))
    needs = frozenset({"reference"})

    def __init__(self, inception_weights: str | None = None, kid_subsets: int = 50,
                 kid_subset_size: int = 1000):
        self.weights, self.kid_subsets, self.kid_subset_size = inception_weights, kid_subsets, kid_subset_size

    def _features(self, images: torch.Tensor, ctx: EvalContext) -> torch.Tensor:
        from pid.eval.functional import inception_features

        return inception_features(images.to(ctx.device), self.extractor).cpu()

    def setup(self, ctx: EvalContext) -> str | None:
        from pid.eval.inception import inception_feature_extractor

        self.extractor = inception_feature_extractor(self.weights).to(ctx.device)
        self.reference = self._features(self._view(ctx.truth, ctx), ctx)
        return None

    def _view(self, images: torch.Tensor, ctx: EvalContext) -> torch.Tensor:
        return images

    def score(self, images: torch.Tensor, ctx: EvalContext) -> dict[str, float]:
        from pid.eval.functional import fid_from_features, kid_from_features

        f = self._features(self._view(images, ctx), ctx)
        kid, kid_std = kid_from_features(f, self.reference, int(self.kid_subsets), int(self.kid_subset_size))
        fid_key, kid_key = (c.key for c in self.columns)
        return {fid_key: fid_from_features(f, self.reference), kid_key: kid * 1e3,
                f"{kid_key}_std": kid_std * 1e3}


class PatchFID(FID):
    """FID and KID×1e3 on the seeded native-resolution crops of ``crops:`` (the same pixels for the
    reference and every method), so the Inception net sees the decoded detail."""

    columns = (Column("patch_fid", "patch-FID", ".2f", "lower"),
               Column("patch_kid", "patch-KID×1e3", ".1f", "lower"))
    needs = frozenset({"reference", "crops"})

    def _view(self, images: torch.Tensor, ctx: EvalContext) -> torch.Tensor:
        return ctx.crops(images)

    def setup(self, ctx: EvalContext) -> str | None:
        super().setup(ctx)
        n, dim = self.reference.shape
        if n < dim:
            self.caveat = (
                f"patch-FID is estimated from {n} patches, fewer than the {dim} Inception dimensions: its "
                "bias is large and can differ between methods. patch-KID (unbiased MMD², Bińkowski et al. "
                "2018) on the same patches is reported beside it; where the two disagree, the sample is too "
                "small to call. Raise data.max_images / crops.per_image for a tighter FID")
        return None


class _Paired(Metric):
    """A metric of each output against its own ground truth, also reported per group of ``data.groups``."""

    needs = frozenset({"reference"})
    per_group = True

    def score(self, images: torch.Tensor, ctx: EvalContext) -> dict[str, float]:
        return self.score_pair(images, ctx.truth)


class PSNR(_Paired):
    """Peak signal-to-noise ratio (dB) against the ground truth."""

    columns = (Column("psnr", "PSNR", ".2f", "higher"),)

    def score_pair(self, pred: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
        from pid.eval.functional import PSNR_CAP_DB, psnr, psnr_capped

        values = psnr(pred, truth, reduction="none")
        capped = psnr_capped(values)
        if capped:  # identical at 8 bits (e.g. a blank crop): counted, never averaged in as inf
            self.caveat = (f"{capped} of {len(values)} outputs in a set equal their ground truth at 8 bits; "
                           f"their PSNR counts as the {PSNR_CAP_DB:.1f} dB of 8-bit quantisation noise")
        return {"psnr": float(values.mean())}


class SSIM(_Paired):
    """Structural similarity against the ground truth."""

    columns = (Column("ssim", "SSIM", ".4f", "higher"),)

    def score_pair(self, pred: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
        from pid.eval.functional import ssim

        return {"ssim": ssim(pred, truth)}


class LPIPS(_Paired):
    """LPIPS (AlexNet) against the ground truth, with a local torchvision backbone file."""

    columns = (Column("lpips", "LPIPS", ".4f", "lower"),)

    def __init__(self, backbone: str | None = None):
        self.backbone = backbone

    def setup(self, ctx: EvalContext) -> str | None:
        if not self.backbone:
            return f"{_NOT_CONFIGURED} (metrics.{self.name}.backbone=/path/alexnet-owt-7be5be79.pth)"
        from pid.eval.functional import LPIPSNet

        self.net = LPIPSNet(self.backbone).to(ctx.device)
        return None

    def score_pair(self, pred: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
        return {"lpips": self.net(pred, truth)}


class NIQE(Metric):
    """NIQE (no reference, offline); needs outputs of at least 193 px."""

    columns = (Column("niqe", "NIQE", ".2f", "lower"),)

    def setup(self, ctx: EvalContext) -> str | None:
        from pid.eval.noref import niqe_available

        ok, why = niqe_available()
        return None if ok else why

    def score(self, images: torch.Tensor, ctx: EvalContext) -> dict[str, float]:
        from pid.eval.noref import NIQE_MIN_SIDE, niqe_scores

        value = nanmean(niqe_scores(images))
        if math.isnan(value) and min(images.shape[-2:]) < NIQE_MIN_SIDE:
            self.caveat = f"needs outputs ≥{NIQE_MIN_SIDE} px (data.crop_size)"
        return {"niqe": value}


class BRISQUE(Metric):
    """BRISQUE (no reference, offline; the SVR model of the ``brisque`` wheel); needs ≥16 px."""

    columns = (Column("brisque", "BRISQUE", ".2f", "lower"),)

    def setup(self, ctx: EvalContext) -> str | None:
        from pid.eval.noref import brisque_available

        ok, why = brisque_available()
        return None if ok else why

    def score(self, images: torch.Tensor, ctx: EvalContext) -> dict[str, float]:
        from pid.eval.noref import brisque_scores

        return {"brisque": nanmean(brisque_scores(images))}


class QAlign(Metric):
    """Q-Align 1–5 (learned, no reference) from a local q-future/one-align snapshot; nothing is downloaded.

    A missing folder raises MissingWeightsError naming ``metrics.<name>.path``; a model that needs its
    own code without ``trust_remote_code: true`` raises PiDConfigError. Weights load on first use.
    """

    columns = (Column("qalign", "Q-Align", ".2f", "higher"),)

    def __init__(self, path: str | None = None, trust_remote_code: bool = False, batch_size: int = 8):
        self.path, self.trust_remote_code, self.batch_size = path, trust_remote_code, batch_size

    def setup(self, ctx: EvalContext) -> str | None:
        if not self.path:
            return f"{_NOT_CONFIGURED} (metrics.{self.name}.path=DIR: a local q-future/one-align snapshot)"
        from pid.eval.qalign import QAlignScorer
        from pid.utils.errors import MissingWeightsError, PiDConfigError

        keys = (f"metrics.{self.name}.path", f"metrics.{self.name}.trust_remote_code=true")
        try:
            self.scorer = QAlignScorer(str(self.path), device=str(ctx.device),
                                       batch_size=int(self.batch_size),
                                       trust_remote_code=bool(self.trust_remote_code), options=keys)
        except PermissionError as err:
            raise PiDConfigError(f"metrics.{self.name}: {err}") from err
        except FileNotFoundError as err:
            raise MissingWeightsError.with_message(f"{keys[0]}: {err}", keys[0]) from err
        return None

    def score(self, images: torch.Tensor, ctx: EvalContext) -> dict[str, float]:
        from pid.eval.noref import qalign_scores

        return {"qalign": nanmean(qalign_scores(self.scorer, images))}


class CLIPScore(Metric):
    """CLIP score of each output with its caption, through open_clip with local weights only.

    ``model_name`` (an open_clip architecture, e.g. ViT-B-32) with ``pretrained`` (a local weights
    file), or ``model_cfg`` (an open_clip CLIP config dict; random weights without ``pretrained``).
    """

    columns = (Column("clip", "CLIP", ".2f", "higher"),)
    needs = frozenset({"captions"})

    def __init__(self, model_name: str | None = None, pretrained: str | None = None,
                 model_cfg: dict | None = None):
        self.model_name, self.pretrained, self.model_cfg = model_name, pretrained, model_cfg

    def setup(self, ctx: EvalContext) -> str | None:
        from pid.eval.clip_score import build_clip_scorer

        cfg = dict(self.model_cfg) if self.model_cfg else None
        self.scorer = build_clip_scorer(self.model_name, self.pretrained, cfg, device=ctx.device)
        if self.scorer is None:
            return (f"{_NOT_CONFIGURED} (metrics.{self.name}.model_name + metrics.{self.name}.pretrained: "
                    "local open_clip weights)")
        return None

    def score(self, images: torch.Tensor, ctx: EvalContext) -> dict[str, float]:
        return {"clip": self.scorer(images.to(ctx.device), ctx.captions)}
