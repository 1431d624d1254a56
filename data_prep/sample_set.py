"""Build a small set of REAL images offline, for quickstarts, tests and smoke runs.

Sources (all found on the machine, nothing downloaded):
- ``skimage``: the public-domain / CC0 photographs bundled with scikit-image
  (those that need ``pooch`` downloads are skipped);
- ``wallpaper``: Debian desktop backgrounds (mate-backgrounds,
  plasma-workspace-wallpapers) when installed; only the largest size of each
  wallpaper is kept;
- ``pdf``: pages of real PDFs (texlive documentation and other PDFs under
  /usr/share/doc) rendered with pypdfium2; when none exist, a few text-rich
  documents are generated with reportlab and rendered instead.

Layout written::

    out_dir/train/<key>.png, <key>.txt (caption)
    out_dir/val/<key>.png, <key>.txt
    out_dir/manifest.json               (written last; its presence marks a complete set)

The split is deterministic and held out by *group* (an image, a stereo pair, a
whole PDF document, all sizes of one wallpaper), never by crop. A second call on
a complete set returns immediately.

CLI: ``python -m data_prep.sample_set OUT_DIR [--max-images N] [--sources skimage,pdf]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from data_prep import pdf_pages
from pid.data.io import list_image_files, load_rgb, probe_image
from pid.utils.errors import PiDConfigError

log = logging.getLogger(__name__)

FORMAT = "pid.sample_set.v1"
MANIFEST = "manifest.json"
MARKER = ".pid_sample_set"  # marks a directory whose train/ and val/ this module may rewrite
ALL_SOURCES = ("skimage", "wallpaper", "pdf")
DEFAULT_WALLPAPER_DIRS = ("/usr/share/backgrounds", "/usr/share/wallpapers")
PDF_CAPTION = "a page of a typeset document"

# skimage.data photographs: (loader name, caption). Colour first; greyscale photos are
# converted to RGB. Synthetic images (colorwheel, logo, checkerboard, ...) are left out.
SKIMAGE_PHOTOS = (
    ("astronaut", "a portrait of an astronaut in a spacesuit in front of a flag"),
    ("chelsea", "a close-up photo of a tabby cat"),
    ("coffee", "a cup of coffee on a saucer, seen from above"),
    ("rocket", "a rocket standing on its launch pad"),
    ("hubble_deep_field", "a deep-field telescope image of many distant galaxies"),
    ("immunohistochemistry", "a microscope image of stained tissue"),
    ("retina", "a fundus photograph of a human retina"),
    ("stereo_motorcycle", "a motorcycle parked in a workshop"),
    ("camera", "a black-and-white photo of a man with a camera on a tripod"),
    ("coins", "a black-and-white photo of old coins"),
    ("moon", "a black-and-white photo of the surface of the moon"),
    ("grass", "a black-and-white close-up texture of grass"),
    ("gravel", "a black-and-white close-up texture of gravel"),
    ("brick", "a black-and-white close-up texture of a brick wall"),
)


@dataclass(frozen=True)
class Candidate:
    """One image the set may contain; ``load`` is called only if it is selected."""

    key: str
    source: str
    group: str
    origin: str
    caption: str
    load: Callable[[], np.ndarray]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


def _as_rgb(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        a = np.clip(a * (255.0 if a.max() <= 1.0 else 1.0), 0, 255).round().astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return np.ascontiguousarray(a[..., :3])


# --- candidates per source -------------------------------------------------------------------
def skimage_candidates() -> list[Candidate]:
    """The skimage photographs that exist in the installed version (downloads not attempted)."""
    import skimage.data as skd

    out = []
    for name, caption in SKIMAGE_PHOTOS:
        fn = getattr(skd, name, None)
        if fn is None:
            continue
        group = f"skimage/{name}"
        if name == "stereo_motorcycle":  # a stereo pair: two views, one group
            for side, i in (("left", 0), ("right", 1)):
                key, origin = f"skimage_{name}_{side}", f"skimage.data.{name}[{i}]"
                out.append(Candidate(key, "skimage", group, origin, caption, partial(_skimage_load, fn, i)))
        else:
            key, origin = f"skimage_{name}", f"skimage.data.{name}"
            out.append(Candidate(key, "skimage", group, origin, caption, partial(_skimage_load, fn)))
    return out


def _skimage_load(fn: Callable, index: int | None = None) -> np.ndarray:
    data = fn()
    return _as_rgb(data if index is None else data[index])


def _wallpaper_group(path: Path) -> str:
    """Plasma wallpapers ship one picture in many sizes under <name>/contents/images/."""
    parts = path.parts
    if "contents" in parts:
        return str(Path(*parts[: parts.index("contents")]))
    return str(path.with_suffix(""))


def wallpaper_candidates(dirs: Sequence[str | os.PathLike] = DEFAULT_WALLPAPER_DIRS) -> list[Candidate]:
    """The largest readable file of each wallpaper under ``dirs``."""
    best: dict[str, tuple[int, Path]] = {}
    for d in dirs:
        for path in list_image_files(d):
            try:
                w, h = probe_image(path)
            except Exception:  # noqa: BLE001 - unreadable files are simply not candidates
                continue
            group = _wallpaper_group(path)
            if group not in best or w * h > best[group][0]:
                best[group] = (w * h, path)
    out = []
    for group, (_, path) in sorted(best.items()):
        tag = hashlib.sha1(group.encode()).hexdigest()[:6]
        key = f"wallpaper_{_safe(Path(group).name)}_{tag}"
        load = partial(load_rgb, path)
        out.append(Candidate(key, "wallpaper", f"wallpaper/{group}", str(path), "a desktop wallpaper", load))
    return out


def pdf_candidates(
    out_dir: Path,
    pdf_dirs: Sequence[str | os.PathLike] = pdf_pages.DEFAULT_PDF_DIRS,
    max_pdfs: int = 8,
    pages_per_pdf: int = 2,
    dpi: float = 150.0,
    generated_pdfs: int | None = None,
) -> list[Candidate]:
    """Pages of up to ``max_pdfs`` real PDFs (spread over the sorted list) or of generated ones.

    ``generated_pdfs=None`` generates 3 documents only when no real PDF is found.
    """
    real = pdf_pages.find_pdfs(pdf_dirs)
    if len(real) > max_pdfs:
        real = [real[round(i * (len(real) - 1) / max(max_pdfs - 1, 1))] for i in range(max_pdfs)]
    n_gen = (3 if not real else 0) if generated_pdfs is None else generated_pdfs
    # (file, identity): the identity names the document independently of where out_dir is
    docs: list[tuple[Path, str]] = [(p, str(p)) for p in real]
    for i in range(n_gen):
        path = out_dir / "pdf_src" / f"generated_{i}.pdf"
        if not path.is_file():
            pdf_pages.generate_text_pdf(path, style_index=i)
        docs.append((path, f"generated_{i}"))
    out = []
    for path, identity in docs:
        try:
            pages = pdf_pages.spread_pages(pdf_pages.page_count(path), pages_per_pdf)
        except Exception as e:  # noqa: BLE001 - broken PDFs are skipped
            log.warning("skipping unreadable PDF %s: %s", path, e)
            continue
        stem = _safe(path.name.split(".pdf")[0])
        tag = hashlib.sha1(identity.encode()).hexdigest()[:6]
        for page in pages:
            key, origin = f"pdf_{stem}_{tag}_p{page:03d}", f"{identity}#page={page + 1}"
            load = partial(pdf_pages.render_page, path, page, dpi)
            out.append(Candidate(key, "pdf", f"pdf/{identity}", origin, PDF_CAPTION, load))
    return out


# --- split and selection ------------------------------------------------------------------------
def _rank(group: str, seed: int) -> str:
    return hashlib.sha1(f"{seed}:{group}".encode()).hexdigest()


def split_groups(groups_by_source: dict[str, set[str]], val_fraction: float, seed: int = 0) -> set[str]:
    """Groups assigned to val: per source, the ``val_fraction`` with the smallest hash rank.

    A source with one group keeps it in train; if that leaves val empty while there
    are at least two groups overall, the overall lowest-ranked group goes to val.
    """
    val: set[str] = set()
    for groups in groups_by_source.values():
        ranked = sorted(groups, key=lambda g: _rank(g, seed))
        if len(ranked) >= 2:
            k = min(max(1, round(val_fraction * len(ranked))), len(ranked) - 1)
            val.update(ranked[:k])
    every = sorted({g for gs in groups_by_source.values() for g in gs}, key=lambda g: _rank(g, seed))
    if not val and len(every) >= 2 and val_fraction > 0:
        val.add(every[0])
    return val


def _interleave(lists: Sequence[list[Candidate]]) -> list[Candidate]:
    out, i = [], 0
    while any(i < len(lst) for lst in lists):
        out += [lst[i] for lst in lists if i < len(lst)]
        i += 1
    return out


# --- manifest ---------------------------------------------------------------------------------
def read_manifest(out_dir: str | os.PathLike) -> dict | None:
    """The manifest of a complete set at ``out_dir`` (all listed files present), else None."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if manifest.get("format") != FORMAT or not manifest.get("complete"):
        return None
    if not all((Path(out_dir) / item["file"]).is_file() for item in manifest.get("images", [])):
        return None
    return manifest


def _prepare_out_dir(out_dir: Path, force: bool) -> Path:
    """Claim ``out_dir`` for the sample set (refusing foreign images); returns a fresh staging dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    foreign = [d for d in ("train", "val") if list_image_files(out_dir / d)]
    if foreign and not force and not (out_dir / MARKER).exists():
        raise PiDConfigError(
            f"'{out_dir}' already holds images in {'/'.join(foreign)}/ that build_sample_set did not "
            "write; refusing to overwrite them: point the sample set (data.root) at another folder "
            "or pass force=True"
        )
    (out_dir / MARKER).write_text("written by data_prep.sample_set.build_sample_set\n")
    (out_dir / MANIFEST).unlink(missing_ok=True)
    staging = out_dir / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    return staging


def _stage_images(
    candidates: list, target: int, min_side: int, staging: Path, verbose: bool
) -> tuple[list[dict], list[dict]]:
    """Load candidates in turn into ``staging`` until ``target`` are kept; returns (written, skipped)."""
    written: list[dict] = []
    skipped: list[dict] = []
    with _progress(target, verbose) as bar:
        for cand in candidates:
            if len(written) >= target:
                break
            try:
                rgb = cand.load()
            except Exception as e:  # noqa: BLE001 - e.g. skimage files that need pooch
                skipped.append({"key": cand.key, "reason": f"{type(e).__name__}: {e}"[:200]})
                continue
            h, w = rgb.shape[:2]
            if min(h, w) < min_side:
                skipped.append({"key": cand.key, "reason": f"{w}x{h} smaller than min_side={min_side}"})
                continue
            Image.fromarray(rgb).save(staging / f"{cand.key}.png", compress_level=4)
            written.append(
                {"key": cand.key, "source": cand.source, "group": cand.group, "origin": cand.origin,
                 "caption": cand.caption, "width": int(w), "height": int(h)}
            )  # fmt: skip
            bar.update(1)
    return written, skipped


def _place_splits(out_dir: Path, staging: Path, written: list[dict], val_fraction: float, seed: int) -> None:
    """Move the staged images into ``train/`` / ``val/`` (split by group) with their captions."""
    groups: dict[str, set[str]] = defaultdict(set)
    for item in written:
        groups[item["source"]].add(item["group"])
    val_groups = split_groups(groups, val_fraction, seed)

    for split in ("train", "val"):
        shutil.rmtree(out_dir / split, ignore_errors=True)
        (out_dir / split).mkdir()
    for item in written:
        split = "val" if item["group"] in val_groups else "train"
        item["split"] = split
        item["file"] = f"{split}/{item['key']}.png"
        os.replace(staging / f"{item['key']}.png", out_dir / item["file"])
        (out_dir / split / f"{item['key']}.txt").write_text(item["caption"] + "\n", encoding="utf-8")
    shutil.rmtree(staging, ignore_errors=True)


def _write_manifest(out_dir: Path, params: dict, written: list[dict], skipped: list[dict]) -> dict:
    counts = Counter(item["split"] for item in written)
    manifest = {
        "format": FORMAT,
        "complete": True,
        "params": params,
        "counts": {
            "train": counts.get("train", 0), "val": counts.get("val", 0),
            "by_source": dict(Counter(item["source"] for item in written)),
        },
        "skipped": skipped,
        "images": sorted(written, key=lambda item: item["file"]),
    }  # fmt: skip
    tmp = out_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out_dir / MANIFEST)
    return manifest


def build_sample_set(
    out_dir: str | os.PathLike,
    sources: Sequence[str] = ALL_SOURCES,
    max_images: int | None = None,
    val_fraction: float = 0.2,
    min_side: int = 256,
    max_pdfs: int = 8,
    pages_per_pdf: int = 2,
    dpi: float = 150.0,
    generated_pdfs: int | None = None,
    wallpaper_dirs: Sequence[str | os.PathLike] = DEFAULT_WALLPAPER_DIRS,
    pdf_dirs: Sequence[str | os.PathLike] = pdf_pages.DEFAULT_PDF_DIRS,
    seed: int = 0,
    force: bool = False,
    verbose: bool = True,
) -> dict:
    """Build (or find) the offline sample image set at ``out_dir``; returns its manifest.

    ``sources`` picks from ("skimage", "wallpaper", "pdf"); ``max_images`` caps the
    set, taking sources in turn so a small set stays diverse; images with a side
    below ``min_side`` are skipped (never upsampled). If a complete manifest exists
    the call returns it at once (``force=True`` rebuilds).
    """
    out_dir = Path(out_dir)
    unknown = set(sources) - set(ALL_SOURCES)
    if unknown:
        raise ValueError(f"unknown sample-set sources {sorted(unknown)}; choose from {ALL_SOURCES}")
    if not force and (manifest := read_manifest(out_dir)) is not None:
        if verbose:
            print(f"sample set: {len(manifest['images'])} images already at {out_dir}")
        return manifest

    staging = _prepare_out_dir(out_dir, force)
    per_source = {
        "skimage": skimage_candidates if "skimage" in sources else list,
        "wallpaper": (lambda: wallpaper_candidates(wallpaper_dirs)) if "wallpaper" in sources else list,
        "pdf": (lambda: pdf_candidates(out_dir, pdf_dirs, max_pdfs, pages_per_pdf, dpi, generated_pdfs))
        if "pdf" in sources
        else list,
    }
    candidates = _interleave([per_source[s]() for s in sources])
    target = len(candidates) if max_images is None else min(max_images, len(candidates))
    written, skipped = _stage_images(candidates, target, min_side, staging, verbose)
    _place_splits(out_dir, staging, written, val_fraction, seed)
    params = {
        "sources": list(sources), "max_images": max_images, "val_fraction": val_fraction,
        "min_side": min_side, "max_pdfs": max_pdfs, "pages_per_pdf": pages_per_pdf, "dpi": dpi,
        "generated_pdfs": generated_pdfs, "seed": seed,
    }  # fmt: skip
    manifest = _write_manifest(out_dir, params, written, skipped)
    if verbose:
        by_source = ", ".join(f"{k} {v}" for k, v in manifest["counts"]["by_source"].items())
        print(
            f"sample set: {len(written)} images (train {manifest['counts']['train']} / val "
            f"{manifest['counts']['val']}; {by_source}; {len(skipped)} skipped) -> {out_dir}"
        )
    return manifest


class _progress:
    """The sample set's progress (:func:`data_prep.progress.bar`); nothing when verbose is off."""

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        if enabled:
            from data_prep.progress import bar

            self.bar = bar(total=total, desc="sample set", leave=True)

    def __enter__(self):
        return self

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def main(argv: list[str] | None = None) -> None:
    """CLI entry: ``python -m data_prep.sample_set OUT_DIR``."""
    ap = argparse.ArgumentParser(description="Build the offline sample image set.")
    ap.add_argument("out_dir")
    ap.add_argument("--sources", default=",".join(ALL_SOURCES), help=f"comma list from {ALL_SOURCES}")
    ap.add_argument("--max-images", type=int, default=None)
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--min-side", type=int, default=256)
    ap.add_argument("--max-pdfs", type=int, default=8)
    ap.add_argument("--pages-per-pdf", type=int, default=2)
    ap.add_argument("--dpi", type=float, default=150.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="rebuild even if a complete set exists")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    build_sample_set(
        args.out_dir,
        sources=[s for s in args.sources.split(",") if s],
        max_images=args.max_images,
        val_fraction=args.val_fraction,
        min_side=args.min_side,
        max_pdfs=args.max_pdfs,
        pages_per_pdf=args.pages_per_pdf,
        dpi=args.dpi,
        seed=args.seed,
        force=args.force,
    )


if __name__ == "__main__":
    main()
