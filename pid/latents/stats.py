"""Per-(C, H, W) latent statistics: mean and variance of every latent cell over a set of images.

RAE latents (DINOv2, SigLIP-2) are normalised with such statistics (docs/method.md §5): the latent of a
``native_size``² image is computed for every image, and the per-position mean and (population)
variance are accumulated in float64 with Chan's parallel update, so any number of images fits.

    python -m pid.latents.stats --latent rae_dinov2 --source data/shards/ latent.path=/w/dinov2.safetensors
    python -m pid.latents.stats --latent rae_siglip2 --source /photos --max-images 50000

``--source``: image folders (searched recursively) and/or WebDataset ``.tar`` shards (their image
members), any mix. Images are resized (shorter side, bicubic, antialiased) and centre-cropped to the
latent's ``native_size`` (or ``--size``). Trailing ``key=value`` arguments are Hydra overrides of the
training config (e.g. ``latent.path=…``). The result goes to the latent config's ``stats_path``
(``conf/latent/stats/…``, next to the config) unless ``--out`` is given: a safetensors file with
``mean`` and ``var`` (C, H, W) plus metadata (image count, size, latent name).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pid.data.io import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = IMAGE_EXTENSIONS


class RunningStats:
    """Per-element mean and population variance over batches (Chan et al. parallel update, float64)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def update(self, batch: torch.Tensor) -> None:
        x = batch.detach().double().cpu()
        nb = x.shape[0]
        if nb == 0:
            return
        mb = x.mean(0)
        m2b = ((x - mb) ** 2).sum(0)
        if self.mean is None:
            self.n, self.mean, self.m2 = nb, mb, m2b
            return
        if mb.shape != self.mean.shape:
            raise ValueError(f"latent shape changed from {tuple(self.mean.shape)} to {tuple(mb.shape)}")
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2b + delta**2 * (self.n * nb / n)
        self.n = n

    @property
    def var(self) -> torch.Tensor:
        if not self.n:
            raise ValueError("no samples")
        return self.m2 / self.n


def iter_source_images(sources: Iterable[str | Path]) -> Iterator[tuple[str, np.ndarray]]:
    """(name, upright RGB uint8 (H, W, 3) array) for every image in folders (recursive) and ``.tar``
    shards, decoded by the one decoder (``pid.data.io.decode_rgb``); unreadable files, samples and
    shard damage are skipped with a warning. Raises ``FileNotFoundError`` for a missing source."""
    from pid.data.io import decode_rgb, scan_image_files
    from pid.data.shard_stream import IMAGE_EXTS, iter_tar_samples

    def decode(data_or_path, name):
        try:
            return decode_rgb(data_or_path)
        except Exception as err:  # noqa: BLE001 - a broken file should not stop a long statistics run
            log.warning("skipping unreadable image %s (%s)", name, err)
            return None

    for source in sources:
        source = Path(source).expanduser()
        if source.is_dir():
            files, skipped = scan_image_files(source, IMAGE_SUFFIXES + (".tar",))
            for path, reason, detail in skipped:
                log.warning("skipping %s: %s (%s)", path, reason, detail)
        elif source.is_file():
            files = [source]
        else:
            raise FileNotFoundError(f"--source {source} does not exist")
        for file in files:
            if file.suffix == ".tar":
                def on_error(reason, exn, file=file):
                    log.warning("%s: %s (%s)", file, reason, exn)

                for sample in iter_tar_samples(str(file), on_error):
                    for ext in IMAGE_EXTS:
                        if ext in sample:
                            name = f"{file}:{sample['__key__']}.{ext}"
                            arr = decode(sample[ext], name)
                            if arr is not None:
                                yield name, arr
            else:
                arr = decode(file, str(file))
                if arr is not None:
                    yield str(file), arr


def center_square(img: np.ndarray, size: int) -> torch.Tensor:
    """HWC uint8 → (3, size, size) in [-1, 1]: shorter side to ``size`` (bicubic, antialiased), centre
    crop."""
    x = (
        torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1)[None].float() / 127.5
        - 1.0
    )
    h, w = x.shape[-2:]
    s = size / min(h, w)
    nh, nw = max(size, round(h * s)), max(size, round(w * s))
    x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[0, :, top : top + size, left : left + size].clamp(-1, 1)


@torch.no_grad()
def compute_latent_stats(
    latent,
    images: Iterable[np.ndarray],
    size: int,
    batch_size: int = 16,
    max_images: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(mean, var, count) of ``latent.encode_raw`` over ``images`` (HWC uint8 arrays), per (C, H, W)."""
    stats, batch = RunningStats(), []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=max_images, unit="img", desc=f"stats {getattr(latent, 'name', '')}")

    def flush():
        if batch:
            stats.update(latent.encode_raw(torch.stack(batch).to(device)).float())
            if bar is not None:
                bar.update(len(batch))
            batch.clear()

    for count, img in enumerate(images):
        if max_images is not None and count >= max_images:
            break
        batch.append(center_square(img, size))
        if len(batch) == batch_size:
            flush()
    flush()
    if bar is not None:
        bar.close()
    if not stats.n:
        raise ValueError("no readable images in the source")
    return stats.mean.float(), stats.var.float(), stats.n


def save_stats(path: str | Path, mean: torch.Tensor, var: torch.Tensor, **meta) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {"mean": mean.contiguous(), "var": var.contiguous()},
        str(path),
        metadata={k: str(v) for k, v in meta.items()},
    )
    return path


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m pid.latents.stats", description=__doc__.split("\n\n")[0])
    parser.add_argument("--latent", required=True, help="a config under conf/latent/ (e.g. rae_dinov2)")
    parser.add_argument("--source", nargs="+", required=True, help="image folders and/or .tar shards")
    parser.add_argument("--out", default=None, help="output file (default: the config's latent.stats_path)")
    parser.add_argument(
        "--size", type=int, default=None, help="image side (default: the latent's native_size)"
    )
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides, e.g. latent.path=/weights/dinov2.safetensors"
    )
    args = parser.parse_args(argv)

    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    conf_dir = str(Path(__file__).resolve().parents[2] / "conf")
    with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
        cfg = compose("train", overrides=[f"latent={args.latent}", *args.overrides])
    out = args.out or OmegaConf.select(cfg, "latent.stats_path")
    if not out:
        raise SystemExit(f"latent={args.latent} has no stats_path; pass --out")
    latent_cfg = OmegaConf.to_container(cfg.latent, resolve=True)
    latent_cfg["stats_path"] = None  # computing them: raw latents
    latent = instantiate(latent_cfg).to(args.device)
    size = args.size or int(latent_cfg.get("native_size") or 512)
    images = (img for _, img in iter_source_images(args.source))
    mean, var, n = compute_latent_stats(
        latent, images, size, args.batch_size, args.max_images, args.device, progress=True
    )
    path = save_stats(out, mean, var, images=n, size=size, latent=args.latent)
    print(f"wrote per-(C,H,W) statistics of {n} images, shape {tuple(mean.shape)} → {path}")
    return path


if __name__ == "__main__":
    main()
