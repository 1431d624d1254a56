"""LightningDataModule over WebDataset shards (an image member per sample and optional ``.json`` /
``.txt`` captions), as the data-set builder writes them (``make data`` for the embedded sample set).

Training batches: ``{"image": uint8 (B, 3, H, W), "caption": list[str], "key": list[str],
"skipped": int}`` where (H, W) is one aspect-ratio bucket per batch (docs/method.md §3). The LQ latent is
made on the device by the LightningModule. Validation: fixed square ``crop_size`` crops.

Buckets: ``buckets.kind`` ``single`` (1:1, 4:3, 3:4, 16:9, 9:16 at ``crop_size`` scale; at 2048
these are the paper's 2048², 2304×1728, 1728×2304, 2688×1536, 1536×2688), ``multi`` (the 2K–4K
levels scaled by ``crop_size / 2048``) or ``square``. Sides are multiples of ``buckets.multiple``.

Steps: every rank runs ``steps_per_epoch`` batches per epoch; by default
``floor(samples / (world_size · batch_size))`` from the shards' ``shards.json`` (at least 1).
Splitting, shuffling and mid-epoch resume: see ``pid.data.shard_stream``. On resume
(``load_state_dict``) the stream starts a new pass seeded with the restored global step.

Nothing here builds shards: ``prepare_data`` only checks that the training shards exist and says
how to get them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from pid.data.buckets import make_buckets
from pid.data.shard_stream import BucketedShardStream, dist_rank_world, list_shards, shard_count
from pid.data.shard_val import FixedCropShardDataset
from pid.utils.errors import PiDConfigError

log = logging.getLogger(__name__)


class ShardDataModule(pl.LightningDataModule):
    """Bucketed training batches streamed from shards; fixed validation crops.

    Args:
        root: folder with ``train/`` and ``val/`` shard sets (used when ``train_shards`` /
            ``val_shards`` are not given).
        train_shards, val_shards: a shard directory, brace pattern or list (override ``root``).
        crop_size: the bucket base size (the 1:1 bucket side) and the validation crop side.
        batch_size: per rank. num_workers: DataLoader workers per rank.
        buckets: ``{kind: single|multi|square, multiple: 64, min_size, max_size, step, level_choice}``.
        mode: ``split`` (exact node/worker splitting) or ``resampled`` (shards drawn with replacement).
        steps_per_epoch: batches per rank per epoch (default from the sample count).
        crop_mode: ``cover`` (downscale to cover the bucket, then crop) or ``crop`` (native crop).
        images_root: a folder of the same images as files with ``train/`` (for the embedded
            latent's fit); defaults to ``root/../sample_images`` for the sample shards.
        min_crop_std: in ``crop`` mode, redraw near-blank training crops (pixel std below this, 0–255).
        val_crop_mode: ``cover`` or ``crop`` for the validation crops (default: ``crop_mode``).
        val_crop_select: ``grid`` (evenly spread) or ``texture`` (the most textured of a denser grid).
    """

    def __init__(
        self,
        root: str | None = None,
        train_shards=None,
        val_shards=None,
        crop_size: int = 2048,
        batch_size: int = 4,
        num_workers: int = 4,
        buckets: dict | None = None,
        mode: str = "split",
        seed: int = 0,
        shuffle_buffer: int = 64,
        steps_per_epoch: int | None = None,
        crop_mode: str = "cover",
        hflip: bool = True,
        val_crops_per_image: int = 2,
        val_batch_size: int | None = None,
        images_root: str | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        min_crop_std: float = 0.0,
        val_crop_mode: str | None = None,
        val_crop_select: str = "grid",
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.root_dir = Path(root).expanduser() if root else None
        self.train_source = train_shards or (str(self.root_dir / "train") if self.root_dir else None)
        self.val_source = val_shards or (str(self.root_dir / "val") if self.root_dir else None)
        if self.train_source is None:
            raise PiDConfigError(
                "ShardDataModule needs data.root (with train/ and val/ shards) or data.train_shards"
            )
        self.start_pass = 0
        self.train_set: BucketedShardStream | None = None
        self.val_set: FixedCropShardDataset | None = None

    @property
    def root(self) -> Path:
        """A folder whose ``train/`` holds the training images as files (for the embedded latent's fit)."""
        if self.hparams.images_root:
            return Path(self.hparams.images_root)
        return (self.root_dir or Path(self.train_source).parent).parent / "sample_images"

    def bucket_set(self):
        b = dict(self.hparams.buckets or {})
        kind = b.pop("kind", "single")
        return make_buckets(kind, base_size=self.hparams.crop_size, **b)

    def prepare_data(self) -> None:
        """Stop early, with the fix, when there are no training shards."""
        self._require_train_shards()

    def _require_train_shards(self) -> None:
        shards = list_shards(self.train_source)
        if not any(Path(s).is_file() or "://" in s or s.startswith("pipe:") for s in shards):
            raise PiDConfigError(
                f"no training shards at {self.train_source!r}: `make data` builds the embedded sample shards "
                "(data/sample_shards); for your own images build shards with the data-set builder's `build` "
                "command and set data.root / data.train_shards"
            )

    def steps(self) -> int:
        hp = self.hparams
        if hp.steps_per_epoch:
            return int(hp.steps_per_epoch)
        n = shard_count(self.train_source)
        if n is None:
            raise PiDConfigError(
                f"cannot count the samples of {self.train_source!r} (no shards.json): "
                "set data.steps_per_epoch"
            )
        _, world = dist_rank_world()
        return max(1, n // (world * hp.batch_size))

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if self.train_set is None and stage in (None, "fit"):
            self._require_train_shards()
            self.train_set = BucketedShardStream(
                self.train_source, self.bucket_set(), hp.batch_size, self.steps(), hp.mode, hp.seed,
                hp.shuffle_buffer, hp.crop_mode, hp.hflip,
                start_pass=self.start_pass, min_std=hp.min_crop_std,
            )  # fmt: skip
        if self.val_set is None and stage in (None, "fit", "validate") and self.val_source:
            if list_shards(self.val_source):
                self.val_set = FixedCropShardDataset(
                    self.val_source, hp.crop_size, hp.val_crops_per_image,
                    crop_mode=hp.val_crop_mode or hp.crop_mode, select=hp.val_crop_select)
            else:
                log.warning("no validation shards at %s", self.val_source)

    def _pin(self) -> bool:
        return torch.cuda.is_available() if self.hparams.pin_memory is None else self.hparams.pin_memory

    def train_dataloader(self) -> DataLoader:
        w = self.hparams.num_workers
        return DataLoader(
            self.train_set,
            batch_size=None,
            num_workers=w,
            pin_memory=self._pin(),
            persistent_workers=self.hparams.persistent_workers and w > 0,
        )

    def val_dataloader(self) -> DataLoader:
        if self.val_set is None:
            return []
        bs = self.hparams.val_batch_size or self.hparams.batch_size
        return DataLoader(
            self.val_set,
            batch_size=bs,
            shuffle=False,
            num_workers=min(self.hparams.num_workers, 1),
            pin_memory=self._pin(),
        )

    # -- resume ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        step = self.trainer.global_step if self.trainer is not None else 0
        return {"global_step": int(step), "seed": int(self.hparams.seed)}

    def load_state_dict(self, state: dict) -> None:
        """Resume: start a fresh pass seeded by the checkpoint's step (no replay of the interrupted epoch)."""
        self.start_pass = 1 + int(state.get("global_step", 0))
        if self.train_set is not None:
            self.train_set.start_pass = self.start_pass
