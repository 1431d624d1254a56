"""LightningDataModule over a folder with ``train/`` and ``val/`` image subfolders.

Batches are ``{"image": uint8 (B, 3, crop, crop), "caption": list[str], "key": list[str]}``;
degradation (bicubic ↓s), latent encoding and scaling to [-1, 1] happen on the
device, in the LightningModule.

Nothing here builds a data set: ``make data`` writes the embedded sample set to
``data/sample_images``; ``prepare_data`` (which Lightning runs once per node before
``setup``) only checks that ``root/train`` holds images and says how to get them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from pid.data.image_folder import FixedCropDataset, ImageCropDataset
from pid.data.io import list_image_files
from pid.utils.errors import PiDConfigError

log = logging.getLogger(__name__)


class ImageFolderDataModule(pl.LightningDataModule):
    """Random training crops from ``root/train``, fixed validation crops from ``root/val``.

    Args:
        root: folder holding ``train/`` and (optionally) ``val/`` subfolders of images.
        crop_size: side of the HQ crops in pixels (images smaller than this are skipped).
        batch_size: crops per batch (per process).
        num_workers: DataLoader worker processes.
        val_crops_per_image: fixed grid crops taken from each validation image.
        hflip: random horizontal flips of training crops.
        val_batch_size: defaults to ``batch_size``.
        train_repeats: random crops of each training image per epoch.
        pin_memory: defaults to whether CUDA is available.
        min_crop_std: redraw near-blank training crops (pixel std below this, 0–255 scale).
        val_crop_select: "grid" (evenly spread) or "texture" (the most textured of a denser grid).
    """

    def __init__(
        self,
        root: str,
        crop_size: int = 256,
        batch_size: int = 4,
        num_workers: int = 2,
        val_crops_per_image: int = 4,
        hflip: bool = True,
        val_batch_size: int | None = None,
        train_repeats: int = 1,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        drop_last: bool = True,
        min_crop_std: float = 0.0,
        val_crop_select: str = "grid",
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.root = Path(root).expanduser()
        self.train_set: ImageCropDataset | None = None
        self.val_set: FixedCropDataset | None = None

    def prepare_data(self) -> None:
        """Stop early, with the fix, when ``root/train`` holds no image at all."""
        if not list_image_files(self.root / "train"):
            raise PiDConfigError(
                f"no training images under '{self.root / 'train'}': `make data` builds the embedded "
                "sample set (data/sample_images); for your own images set data.root to a folder with "
                "train/ and val/"
            )

    def setup(self, stage: str | None = None) -> None:
        """Index ``root/train`` and ``root/val`` (once)."""
        hp = self.hparams
        if self.train_set is None and stage in (None, "fit"):
            self.train_set = ImageCropDataset(
                self.root / "train", hp.crop_size, hflip=hp.hflip, repeats=hp.train_repeats,
                min_std=hp.min_crop_std,
            )
            if len(self.train_set) == 0:
                raise PiDConfigError(
                    f"no training image of at least {hp.crop_size}px under '{self.root / 'train'}': "
                    "set data.root to a folder with train/ images or lower data.crop_size"
                )
        if self.val_set is None and stage in (None, "fit", "validate"):
            self.val_set = FixedCropDataset(self.root / "val", hp.crop_size, hp.val_crops_per_image,
                                            select=hp.val_crop_select)
            if len(self.val_set) == 0:
                log.warning("no validation image of at least %dpx under %s", hp.crop_size, self.root / "val")

    def _loader(self, dataset, batch_size: int, shuffle: bool, drop_last: bool) -> DataLoader:
        workers = self.hparams.num_workers
        pin = self.hparams.pin_memory
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=workers,
            pin_memory=torch.cuda.is_available() if pin is None else pin,
            persistent_workers=self.hparams.persistent_workers and workers > 0,
            drop_last=drop_last,
        )

    def train_dataloader(self) -> DataLoader:
        bs = self.hparams.batch_size
        # A tiny folder must still yield a batch: only drop the last one if a full one exists.
        drop_last = self.hparams.drop_last and len(self.train_set) >= bs
        return self._loader(self.train_set, bs, shuffle=True, drop_last=drop_last)

    def val_dataloader(self) -> DataLoader:
        bs = self.hparams.val_batch_size or self.hparams.batch_size
        return self._loader(self.val_set, bs, shuffle=False, drop_last=False)
