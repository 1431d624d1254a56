"""Image grids during training: native decode + bicubic | PiD | ground truth, on fixed validation crops,
for a clean latent and, with ``sigmas``, for latents noised as an LDM stopped early would leave them."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import lightning.pytorch as pl
import torch
from PIL import Image
from torchvision.utils import make_grid

from pid.lit.ema import find_ema
from pid.lit.strategies import fsdp_root
from pid.utils.images import to_signed, to_uint8, upsample

log = logging.getLogger(__name__)


def comparison_grid(baseline: torch.Tensor, pid: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """One row per image, columns (baseline, PiD, truth); uint8 (3, H, W)."""
    rows = torch.stack([baseline, pid, truth], dim=1).flatten(0, 1)
    return make_grid(to_uint8(rows), nrow=3, padding=2, pad_value=255)


class ImageGrid(pl.Callback):
    """Every ``every_n_steps`` optimizer steps (and at the end of training), decode the same
    validation latents with the EMA network and write ``out_dir/step_XXXXXXX.png``; loggers with
    ``log_image`` (W&B) receive it too. With more than one level in ``sigmas`` the grid has one labelled
    band per level (the latent noised by ``noise_latent`` with a fixed seed, the same for both decoders)."""

    def __init__(self, num_images: int = 4, every_n_steps: int = 1000, out_dir: str = "grids",
                 num_steps: int | None = None, seed: int = 0, sigmas=(0.0,)):
        self.num_images = num_images
        self.every_n_steps = every_n_steps
        self.out_dir = Path(out_dir)
        self.num_steps = num_steps
        self.seed = seed
        self.sigmas = tuple(float(s) for s in sigmas)
        self._batch: torch.Tensor | None = None

    def _fixed_batch(self, trainer: pl.Trainer) -> torch.Tensor | None:
        """``num_images`` validation crops spread evenly over the validation set (so, over images)."""
        if self._batch is None:
            loader = trainer.datamodule.val_dataloader() if trainer.datamodule is not None else None
            dataset = getattr(loader, "dataset", None)
            if dataset is None or len(dataset) == 0:
                return None
            n = min(self.num_images, len(dataset))
            picks = torch.linspace(0, len(dataset) - 1, n).round().long().tolist()
            self._batch = torch.stack([dataset[i]["image"] for i in picks])
        return self._batch

    @torch.no_grad()
    def render(self, trainer: pl.Trainer, pl_module: pl.LightningModule, save: bool = True) -> Path | None:
        images = self._fixed_batch(trainer)
        if images is None:
            return None
        from pid.diffusion.noising import noise_latent

        hq = to_signed(images.to(pl_module.device))
        lq, z0 = pl_module.encode_lq(hq)
        ema = find_ema(trainer)
        decodes = {}
        was_training = pl_module.training
        pl_module.eval()
        try:
            with ema.averaged(pl_module) if ema is not None else contextlib.nullcontext():
                for sigma in self.sigmas:
                    z = z0
                    if sigma:
                        xi = torch.randn(z0.shape, generator=torch.Generator().manual_seed(self.seed + 1))
                        form = getattr(pl_module.latent, "noise_form", "flow")
                        z = noise_latent(z0, sigma, xi.to(z0), form=form)
                    baseline = upsample(pl_module.latent.decode(z).float(), pl_module.sr_scale).clamp(-1, 1)
                    generator = torch.Generator().manual_seed(self.seed)
                    decoded = pl_module.decode(z, sigma, num_steps=self.num_steps, generator=generator)
                    decodes[sigma] = {"baseline": baseline.cpu(), "pid": decoded.float().cpu(),
                                      "truth": hq.cpu()}
        finally:
            pl_module.train(was_training)
        if not save:
            return None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"step_{trainer.global_step:07d}.png"
        if self.sigmas == (0.0,):
            grid = comparison_grid(decodes[0.0]["baseline"], decodes[0.0]["pid"], decodes[0.0]["truth"])
            Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)
        else:
            from pid.eval.heldout import save_comparison_grid

            save_comparison_grid(decodes, path, n=self.num_images)
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key="samples/native+bicubic|pid|truth", images=[str(path)],
                                 step=trainer.global_step)
        return path

    @staticmethod
    def _renders(trainer: pl.Trainer) -> bool:
        """Rank 0 renders; under FSDP every rank decodes (its forward gathers the shards), rank 0 saves."""
        return trainer.is_global_zero or fsdp_root(trainer) is not None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and self._renders(trainer):
            self.render(trainer, pl_module, save=trainer.is_global_zero)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._renders(trainer) and not trainer.fast_dev_run:
            path = self.render(trainer, pl_module, save=trainer.is_global_zero)
            if path is not None:
                log.info("image grid (native decode + bicubic | PiD | ground truth): %s", path)

