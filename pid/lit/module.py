"""LightningModule that trains a PiD teacher (backbone + latent adapter) or its pixel prior (no adapter).

One training step (docs/method.md §3), all on the device:
    HQ crop x₀ ──bicubic ↓sr_scale──▶ LQ image ──frozen encoder──▶ z
    z̃ = noise_latent(z, σ)      σ ~ U(0, σ_max) with probability p, else 0
    t ~ shifted logit-normal,  x_t = (1−t)·x₀ + t·ε,  target v = ε − x₀
    loss = ‖PiD(x_t, t, z̃, σ, text) − v‖²  (+ auxiliary low-res RGB loss in v1.5)
with caption and latent dropout so both guidances can be used at sampling.

The network, latent space, text encoder and optimiser arrive by dependency injection (Hydra `_target_`);
this module only composes them. EMA, image grids and held-out comparisons are callbacks.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import lightning.pytorch as pl
import torch
from torch import nn

from pid.data.augment import augment_batch
from pid.diffusion import flow, losses, noising
from pid.lit.fault_tolerance import guard_loss
from pid.lit.lr_schedule import DECAYS, LRFactor
from pid.utils.containers import plain_container
from pid.weights import load_weights
from pid.utils.errors import PiDConfigError
from pid.utils.images import downsample, to_signed


class PiDModule(pl.LightningModule):
    """Teacher / prior training.

    Args:
        net: a `pid.nn.PiDNet` (adapter None → pixel prior).
        latent: a frozen `pid.latents.LatentSpace`; encodes the LQ image.
        optimizer: partial of a torch optimiser (AdamW in the paper), called with the trainable params.
        text_encoder: a `pid.text` conditioner, or None for caption-free training.
        sr_scale: output size / size of the image the latent encodes.
        warmup_steps: linear learning-rate warm-up.
        lr_decay: after the warm-up, "constant" (the paper's recipe) or "cosine" down to
            ``min_lr_ratio`` × lr at the last step (``trainer.max_steps``); short runs gain most from it.
        init_from: weights to start the network from, any file :mod:`pid.weights` reads (a PixelDiT prior:
            the adapter starts at init; a PiD teacher release, full model.pth, DCP folder or a run of ours).
            Loaded strictly; the per-part report goes to the log.
        init_weights: "ema" (default) or "raw" for files holding both.
        latent_noise: {sigma_max, prob} of latent noising (σ enters only through the adapter's gates).
        caption_dropout, latent_dropout: probabilities, for dual classifier-free guidance.
        time: {logit_mean, logit_std, shift_base, shift_ref_size} of the training t distribution.
        sampling: defaults for `decode`: {num_steps, text_cfg, latent_cfg}.
        aux_rgb_weight: weight of the v1.5 auxiliary low-res RGB loss (used when the adapter has the head).
        augment: {rot90, channel_permute}: `pid.data.augment.augment_batch` on each HQ batch before the
            pair is made (off in the paper, which trains on millions of images).
        consistency: {weight, pool}: `losses.latent_consistency_loss` of x̂₀ = x_t − t·v̂ against the
            HQ crop, pooled over ``pool`` pixels (null: one latent cell); weight 0 (the paper) turns it off.
    """

    def __init__(
        self,
        net: nn.Module,
        latent: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        text_encoder: nn.Module | None = None,
        sr_scale: int = 4,
        warmup_steps: int = 2000,
        lr_decay: str = "constant",
        min_lr_ratio: float = 0.0,
        init_from: str | None = None,
        init_weights: str = "ema",
        latent_noise: dict | None = None,
        caption_dropout: float = 0.1,
        latent_dropout: float = 0.1,
        time: dict | None = None,
        sampling: dict | None = None,
        aux_rgb_weight: float = 0.8,
        consistency: dict | None = None,
        augment: dict | None = None,
        val_timesteps: Sequence[float] = (0.25, 0.5, 0.75),
    ):
        super().__init__()
        if lr_decay not in DECAYS:
            raise PiDConfigError(f"model.lr_decay must be one of {DECAYS}, got {lr_decay!r}")
        self.save_hyperparameters(ignore=["net", "latent", "text_encoder", "optimizer"])
        self.net = net
        self.latent = latent.requires_grad_(False).eval()
        self.text_encoder = text_encoder.requires_grad_(False).eval() if text_encoder is not None else None
        self.optimizer_factory = optimizer
        self.sr_scale = int(sr_scale)
        # Values come from conf/model/teacher.yaml; nothing here repeats them.
        self.latent_noise = dict(latent_noise or {})
        self.time = dict(time or {})
        self.sampling = dict(sampling or {})
        self.consistency = dict(consistency or {"weight": 0.0, "pool": None})
        self.augment = dict(augment or {})
        # Frozen encoders are rebuilt from config; only small embedded latents travel in checkpoints.
        self.strict_loading = False
        self.run_config: dict | None = None
        if init_from:
            self.init_report = load_weights(self.net, init_from, weights=init_weights,
                                            allow=("adapter-at-init",), config_key="model.init_from")

    # ------------------------------------------------------------------ conditioning
    @property
    def has_adapter(self) -> bool:
        return getattr(self.net, "adapter", None) is not None

    @torch.no_grad()
    def encode_lq(self, hq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """HQ image in [-1, 1] → (LQ image, clean normalised latent z)."""
        lq = downsample(hq, self.sr_scale)
        return lq, self.latent.encode(lq).float()

    def encode_text(self, captions: Sequence[str] | None, keep: torch.Tensor | None):
        """Caption states (B, L, D) and mask.

        A dropped caption (keep 0) is the empty caption, as officially.
        """
        if self.text_encoder is None or captions is None:
            return None, None
        captions = list(captions)
        if keep is not None:
            captions = [c if k else "" for c, k in zip(captions, keep.bool().tolist())]
        with torch.no_grad():
            return self.text_encoder(captions)

    def null_text(self, batch: int) -> torch.Tensor | None:
        """States of the text-CFG null caption (the encoder's ``null_caption``).

        None without an encoder.
        """
        if self.text_encoder is None:
            return None
        return self.text_encoder.null_states()

    def training_condition(self, hq: torch.Tensor, captions=None) -> dict[str, Any]:
        """Latent and text conditioning of one training batch, with noising and dropout."""
        b = hq.shape[0]
        lq, z = self.encode_lq(hq)
        sigma = noising.sample_latent_sigma(b, self.latent_noise["sigma_max"], self.latent_noise["prob"],
                                            device=hq.device)
        z_noisy = noising.noise_latent(z, sigma, torch.randn_like(z), form=self.latent.noise_form)
        latent_keep = noising.keep_mask(b, self.hparams.latent_dropout, device=hq.device)
        caption_keep = noising.keep_mask(b, self.hparams.caption_dropout, device=hq.device)
        y, y_mask = self.encode_text(captions, caption_keep)
        return {"latent": z_noisy, "sigma": sigma, "latent_keep": latent_keep,
                "y": y, "y_mask": y_mask, "lq": lq}

    # ------------------------------------------------------------------ training
    def diffusion_loss(self, hq: torch.Tensor, cond: dict[str, Any], t: torch.Tensor,
                       eps: torch.Tensor) -> dict[str, torch.Tensor]:
        """Rectified-flow loss at given t and ε; returns its terms (and 'loss', their weighted sum)."""
        x_t = flow.interpolate(hq, eps, t)
        want_aux = self.has_adapter and getattr(self.net.adapter, "aux_rgb_head", None) is not None
        net_kwargs = {k: cond[k] for k in ("latent", "sigma", "latent_keep", "y", "y_mask")}
        if not self.has_adapter:
            net_kwargs.update(latent=None, sigma=None, latent_keep=None)
        if cond.get("context") is not None:  # context parallelism: the net splits itself, returns it whole
            net_kwargs["context"] = cond["context"]
        out = self.net(x_t, t, return_extras=want_aux, **net_kwargs)
        v_pred, extras = out if want_aux else (out, {})
        terms = {"flow": losses.flow_matching_loss(v_pred, flow.velocity(hq, eps))}
        if want_aux and extras.get("aux_rgb") is not None:
            terms["aux_rgb"] = losses.aux_rgb_loss(extras["aux_rgb"], cond["lq"], cond["sigma"],
                                                   weight=self.hparams.aux_rgb_weight,
                                                   keep=cond.get("latent_keep"))
        if self.consistency["weight"] and self.has_adapter:
            pool = self.consistency["pool"] or self.sr_scale * int(self.latent.down_factor)
            x0_pred = flow.x0_from_v(x_t, v_pred, t)
            terms["consistency"] = self.consistency["weight"] * losses.latent_consistency_loss(
                x0_pred, hq, int(pool), cond["sigma"], keep=cond.get("latent_keep"))
        terms["loss"] = sum(terms.values())
        return terms

    def sample_t(self, b: int, height: int, width: int) -> torch.Tensor:
        return flow.sample_training_t(
            b, height, width, mean=self.time["logit_mean"], std=self.time["logit_std"],
            base_shift=self.time["shift_base"], ref_size=self.time["shift_ref_size"], device=self.device)

    def context_parallel(self):
        """The trainer's context-parallel layout (:mod:`pid.parallel.context`), or None."""
        from pid.parallel.context import of_trainer

        return of_trainer(getattr(self, "_trainer", None))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        cp = self.context_parallel()
        if cp is not None:  # one sample per CP group: its first rank's batch and random draws
            batch = cp.broadcast_batch(batch)
            cp.sync_rng(self.device)
        hq = augment_batch(to_signed(batch["image"]), **self.augment)
        b, _, h, w = hq.shape
        cond = self.training_condition(hq, batch.get("caption"))
        cond["context"] = cp
        terms = self.diffusion_loss(hq, cond, self.sample_t(b, h, w), torch.randn_like(hq))
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items() if k != "loss"}, batch_size=b)
        self.log("train/loss", terms["loss"].detach(), prog_bar=True, batch_size=b)
        return guard_loss(self, terms["loss"])  # None (skip the step) for a NaN/Inf loss with NonFiniteGuard

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Flow loss at fixed t with fixed noise and a clean latent: comparable across runs and steps.

        Under context parallelism a crop whose patch rows do not split over the group runs whole on each
        of its ranks."""
        from pid.nn.pixel_dit import network_patch_size
        from pid.parallel.context import split_problem

        cp = self.context_parallel()
        if cp is not None:
            batch = cp.broadcast_batch(batch)
        hq = to_signed(batch["image"])
        b = hq.shape[0]
        if cp is not None and split_problem(hq.shape[-2] // network_patch_size(self), cp.size):
            cp = None
        gen = torch.Generator(device="cpu").manual_seed(1234 + batch_idx)
        lq, z = self.encode_lq(hq)
        cond = {"latent": z, "sigma": torch.zeros(b, device=hq.device), "latent_keep": None, "lq": lq,
                "context": cp}
        cond["y"], cond["y_mask"] = self.encode_text(batch.get("caption"), None)
        total = 0.0
        for t_value in self.hparams.val_timesteps:
            eps = torch.randn(hq.shape, generator=gen).to(hq.device)
            t = torch.full((b,), float(t_value), device=hq.device)
            loss = self.diffusion_loss(hq, cond, t, eps)["flow"]
            self.log(f"val/loss_t{t_value:g}", loss, batch_size=b, sync_dist=True)
            total = total + loss
        self.log("val/loss", total / len(self.hparams.val_timesteps), prog_bar=True, batch_size=b,
                 sync_dist=True)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def decode(self, latent: torch.Tensor, sigma: float | torch.Tensor = 0.0, *, num_steps: int | None = None,
               text_cfg: float | None = None, latent_cfg: float | None = None, captions=None,
               generator: torch.Generator | None = None, sampler: str | None = None) -> torch.Tensor:
        """Generate the image for a (possibly noisy) normalised latent: [-1, 1], sr_scale × its image size."""
        from pid.sampling import decode_latent

        return decode_latent(
            self.net, latent, sigma, sr_scale=self.sr_scale, latent_down=self.latent.down_factor,
            num_steps=num_steps or self.sampling["num_steps"],
            text_cfg=self.sampling["text_cfg"] if text_cfg is None else text_cfg,
            latent_cfg=self.sampling["latent_cfg"] if latent_cfg is None else latent_cfg,
            text=self.encode_text(captions, None) if captions is not None else (None, None),
            null_text=self.null_text(latent.shape[0]) if captions is not None else None,
            shift_base=self.time["shift_base"], shift_ref_size=self.time["shift_ref_size"],
            shift_rule=self.time.get("shift_rule", "area"), generator=generator,
            sampler=sampler or self.sampling["sampler"])

    # ------------------------------------------------------------------ optimisation
    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        from pid.lit.strategies import fsdp_root

        root = fsdp_root(self.trainer)
        if root is not None and gradient_clip_val:
            # FSDP: the norm over all shards (Lightning's FSDP precision plugin refuses norm clipping).
            root.clip_grad_norm_(float(gradient_clip_val))
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self):
        params = [p for p in self.net.parameters() if p.requires_grad]
        if not params:
            raise RuntimeError("no trainable parameters: "
                               "check model.net.freeze_backbone and the adapter config")
        optimizer = self.optimizer_factory(params)
        total = 0  # only a decay needs the run's length (an unsized stream without max_steps has none)
        decay = self.hparams.lr_decay
        if decay != "constant":
            max_steps = self.trainer.max_steps
            total = max_steps if max_steps > 0 else self.trainer.estimated_stepping_batches
            if total <= int(self.hparams.warmup_steps):  # fast_dev_run, or max_steps cut below the warm-up
                decay, total = "constant", 0
        factor = LRFactor(int(self.hparams.warmup_steps), decay, int(total), float(self.hparams.min_lr_ratio))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep_latent = bool(getattr(self.latent, "store_in_checkpoint", False))
        drop = ("text_encoder.",) + (() if keep_latent else ("latent.",))
        for key in [k for k in checkpoint["state_dict"] if k.startswith(drop)]:
            del checkpoint["state_dict"][key]
        checkpoint["pid"] = {"format": 1, "config": self.run_config, "sr_scale": self.sr_scale}
        from pid.identity import identity_of_module

        checkpoint["pid"]["identity"] = identity_of_module(self).to_dict()
        # Plain containers only, so the file loads with torch.load(weights_only=True).
        for key in ("hyper_parameters", "datamodule_hyper_parameters"):
            if key in checkpoint:
                checkpoint[key] = plain_container(checkpoint[key])
