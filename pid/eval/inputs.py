"""The inputs of an evaluation: checkpoints, the device, the evaluation set and its groups."""

from __future__ import annotations

import glob
import json
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from pid.utils.errors import PiDConfigError
from pid.weights.paths import resolve_weights_path

log = logging.getLogger(__name__)


def resolve_ckpt(path: str | None, key: str, compatible=None) -> Path | None:
    """A checkpoint path, a run folder (its export) or a glob (its newest match ``compatible`` accepts,
    logged with what it passed over); None when unset.

    Missing: MissingWeightsError naming ``key`` (:func:`pid.weights.paths.resolve_weights_path`).
    """
    if path in (None, "", "null"):
        return None
    return resolve_weights_path(path, key, f"checkpoint for `{key}`", "a pid_decoder.safetensors export",
                                source="`make train` (quickstart) or a run of pid.train",
                                compatible=compatible)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def guard_eval_decode(decoder, latent_shape: tuple[int, int, int, int], budget=None) -> None:
    """Estimate one PiD decode of a batch of the evaluation (:func:`pid.guard.guard_decode`), log it and stop
    before anything is decoded when its memory is over what the device has (the time is logged: an
    evaluation runs many decodes by design). Raises OverBudgetError naming data.batch_size and
    data.crop_size. ``budget``: a :class:`pid.guard.Budget` (default: no time limit, 80 % of the device's
    available memory)."""
    import logging

    from pid.guard import Budget, OverBudgetError, guard_decode

    res = guard_decode(decoder, latent_shape, budget or Budget(seconds=None))
    logging.getLogger(__name__).info("one PiD decode of a batch: %s", res.estimate.describe())
    if res.reasons:
        b = latent_shape[0]
        fit = "" if res.fit_latent_hw is None else (
            f" (at batch {b}, crops of about {res.fit_estimate.output_hw[0]} px fit)")
        raise OverBudgetError(
            f"make eval: one PiD decode of a batch is over budget — {'; '.join(res.reasons)}. Ways on: a "
            f"smaller data.batch_size (now {b}; memory grows with it), a smaller data.crop_size{fit}, or a "
            "device with more memory (device=cuda)", res.estimate, res.reasons)


def load_eval_set(cfg: DictConfig, decoder) -> dict:
    """{"truth": (N,3,H,W) [-1,1] or None, "z": (N,C,h,w), "sigma": float, "captions": [...],
    "keys": [...]}."""
    from pid.utils.images import downsample, to_signed

    d = cfg.data
    if d.max_images is not None and (isinstance(d.max_images, bool) or not isinstance(d.max_images, int)
                                     or d.max_images < 1):
        raise PiDConfigError(f"data.max_images={d.max_images!r}: give a whole number of crops ≥ 1, or null "
                             "for every crop")
    sr = decoder.sr_scale
    if d.kind == "latents":
        from pid.decode import read_latent

        z, sigma, _ = read_latent(d.latents)
        cap_file = Path(str(d.latents)).with_suffix(".json")
        caps = json.loads(cap_file.read_text()) if cap_file.is_file() else [d.default_caption] * len(z)
        n = min(len(z), d.max_images or len(z))
        guard_eval_decode(decoder, (min(int(d.batch_size), n), *z.shape[1:]))
        return {"truth": None, "z": z[:n].float(), "sigma": 0.0 if sigma is None else float(sigma[0]),
                "captions": list(caps)[:n], "keys": [f"latent_{i}" for i in range(n)]}
    from pid.guard import check_crop_size

    patch = int(getattr(decoder.net, "patch_size", 16))
    check_crop_size(d.crop_size, latent_down=decoder.latent.down_factor, sr_scale=sr, patch_size=patch)
    side = d.crop_size // (sr * decoder.latent.down_factor)
    guard_eval_decode(decoder, (int(d.batch_size), decoder.latent.channels, side, side))
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
    if len(ds) == 0:
        raise PiDConfigError(f"data.root={d.root}: no image holds a {d.crop_size}px crop")
    keep = range(len(ds))
    if d.max_images and int(d.max_images) < len(ds):  # across groups and images, not the first N crops
        from pid.eval.sample import count_line, representative_indices

        patterns = OmegaConf.to_container(d.get("groups") or {})
        keys = ds.crop_keys() if hasattr(ds, "crop_keys") else [ds[i]["key"] for i in range(len(ds))]
        keep = representative_indices(keys, int(d.max_images), patterns, int(cfg.seed))
        log.info("evaluation set: data.max_images=%d of %d crops, drawn across groups: %s", d.max_images,
                 len(ds), count_line([keys[i] for i in keep], patterns))
    items = [ds[i] for i in keep]
    n = len(items)
    truth = to_signed(torch.stack([it["image"] for it in items]))
    z = torch.cat([decoder.encode(downsample(truth[i:i + d.batch_size], sr)).cpu()
                   for i in range(0, n, d.batch_size)])
    captions = [it.get("caption") or d.default_caption for it in items]
    return {"truth": truth, "z": z.float(), "sigma": 0.0, "captions": captions,
            "keys": [it["key"] for it in items]}


def group_masks(keys: list[str], patterns: dict[str, str] | None) -> dict[str, torch.Tensor]:
    """Boolean masks over the evaluation set per named group (``fnmatch`` on the crop key, whose part
    before ``@`` is the file stem; :func:`pid.eval.sample.group_of`), plus ``other`` for the crops no pattern
    matches; empty groups are left out. A crop matching several patterns goes to the first."""
    from pid.eval.sample import group_of

    if not patterns:
        return {}
    groups = group_of(keys, patterns)
    out = {str(name): torch.tensor([g == str(name) for g in groups], dtype=torch.bool) for name in patterns}
    out = {name: mask for name, mask in out.items() if mask.any()}
    if out and "other" not in out and "other" in groups:
        out["other"] = torch.tensor([g == "other" for g in groups], dtype=torch.bool)
    return out
