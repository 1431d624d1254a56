"""ingest: image folders, file lists and the MultiAspect-4K-1M layout → ``W/ingest.jsonl``.

Sources
- ``--folder DIR``: every file under DIR (recursive, sorted, symlinked folders followed) whose
  suffix looks like an image (``pid.data.io.IMAGE_EXTENSIONS``: ``.png .jpg .jpeg .webp .bmp
  .tif .tiff .gif .pgm .ppm .pnm``); captions from a sidecar ``<stem>.txt`` or a ``<stem>.json``
  (``prompt``/``prompt_medium``/``prompt_short`` or ``caption``). Nothing under DIR is passed
  over silently: folders named like images, symlink loops, broken links and files that are
  neither images nor a sidecar of one are dropped with a reason (``pid.data.io.path_problem``,
  ``not_an_image_suffix``).
- ``--list FILE``: one path per line, optionally ``path<TAB>caption``; relative paths are
  relative to the list file.
- ``--multiaspect ROOT``: MultiAspect-4K-1M as the PiD reference scripts lay it out, either
  * the downloaded layout ``ROOT/image/<uid>.jpg`` + ``ROOT/caption/<uid>.json`` with
    ``{"prompt", "prompt_medium", "prompt_short"}``, or
  * the metadata layout ``ROOT[/data_jsons]/<NNNNNN>.json`` (a list of records, or a dict with
    ``data``/``items``) whose records carry ``image_url``, ``en_caption`` (also ``zh_caption``,
    ``caption``, ``prompt*``) and quality fields; a record is used when its image is on disk
    (``image_path``, relative to ROOT, or ``ROOT/image/<stem>_<index:06d>.*``), else dropped
    with reason ``not_downloaded``. All scalar fields are kept under ``meta``.

Every file is decoded once (``probe``, with the one decoder of ``pid.data.io``): broken ones are
dropped with a reason; animations and multi-page files keep their first frame (said in the
record's ``convert``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from data_prep.probe import Rejected, probe_image_file
from data_prep.progress import bar, summary
from data_prep.records import dropped, safe_key, unique_keys, write_dropped, write_jsonl
from pid.data.io import IMAGE_EXTENSIONS, path_problem, scan_image_files

IMAGE_SUFFIXES = IMAGE_EXTENSIONS
SIDECAR_SUFFIXES = (".txt", ".json")
CAPTION_FIELDS = {"long": ("prompt", "en_caption", "caption", "long_caption"),
                  "medium": ("prompt_medium", "medium_caption"),
                  "short": ("prompt_short", "short_caption")}  # fmt: skip


def captions_from(d: dict) -> dict:
    """Caption lengths found in a metadata dict (``long``/``medium``/``short``), empty ones left out."""
    out = {}
    for length, fields in CAPTION_FIELDS.items():
        for f in fields:
            v = d.get(f)
            if isinstance(v, str) and v.strip():
                out[length] = v.strip()
                break
    return out


def sidecar_captions(path: Path) -> dict:
    txt, js = path.with_suffix(".txt"), path.with_suffix(".json")
    if js.is_file():
        try:
            d = json.loads(js.read_text(encoding="utf-8"))
            if isinstance(d, dict) and (caps := captions_from(d)):
                return caps
        except (OSError, ValueError):
            pass
    if txt.is_file():
        text = txt.read_text(encoding="utf-8", errors="replace").strip()
        return {"long": text} if text else {}
    return {}


# --- candidates: (path, key, source, captions, meta) ------------------------------------------
def _is_pdf(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".pdf") or name.endswith(".pdf.gz")


def _within(path: Path, roots) -> bool:
    real = Path(path).resolve()
    return any(real == r or r in real.parents for r in roots)


def folder_candidates(root: Path, passed_over: list[dict] | None = None, pdf_inputs=()) -> Iterator[tuple]:
    """Image files under ``root``; every other entry that is not a caption sidecar of an image-named
    file, nor a PDF under one of ``pdf_inputs`` (rendered by render-pdfs), goes to ``passed_over`` as
    a dropped row with its reason."""
    root = Path(root)
    others: list[Path] = []
    files, skipped = scan_image_files(root, IMAGE_SUFFIXES, others)
    if passed_over is not None:
        passed_over += [dropped(p, "ingest", reason, detail) for p, reason, detail in skipped]
        stems = {p.with_suffix("") for p in files} | {p.with_suffix("") for p, _, _ in skipped}
        pdf_roots = [Path(p).resolve() for p in pdf_inputs]
        for p in others:
            if p.suffix.lower() in SIDECAR_SUFFIXES and p.with_suffix("") in stems:
                continue
            if _is_pdf(p):
                if not _within(p, pdf_roots):
                    passed_over.append(dropped(
                        p, "ingest", "pdf_not_rendered",
                        "a PDF: pass it (or its folder) with --pdfs to render its pages"))
                continue
            why = (f"suffix {p.suffix or '(none)'!r} is not one of {' '.join(IMAGE_SUFFIXES)} and the file "
                   "is not a caption sidecar; rename it if it is an image")  # fmt: skip
            passed_over.append(dropped(p, "ingest", "not_an_image_suffix", why))
    for p in files:
        rel = p.relative_to(root).with_suffix("")
        yield p, safe_key(f"{root.name}/{rel}"), f"folder:{root.name}", sidecar_captions(p), {}


def list_candidates(list_file: Path) -> Iterator[tuple]:
    list_file = Path(list_file)
    for i, line in enumerate(list_file.read_text(encoding="utf-8").splitlines()):
        if not line.strip() or line.startswith("#"):
            continue
        path_s, _, caption = line.partition("\t")
        p = Path(path_s.strip())
        p = p if p.is_absolute() else list_file.parent / p
        caps = {"long": caption.strip()} if caption.strip() else sidecar_captions(p)
        yield p, safe_key(f"{list_file.stem}/{i:07d}_{p.stem}"), f"list:{list_file.name}", caps, {}


def _json_records(path: Path) -> list[dict]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict):
        data = data.get("data") if isinstance(data.get("data"), list) else data.get("items", [data])
    return [r for r in data if isinstance(r, dict)]


def multiaspect_candidates(root: Path, missing: list[dict]) -> Iterator[tuple]:
    root = Path(root)
    if (root / "image").is_dir() and (root / "caption").is_dir():  # downloaded layout
        for p in sorted(q for q in (root / "image").iterdir() if q.suffix.lower() in IMAGE_SUFFIXES):
            cap = root / "caption" / f"{p.stem}.json"
            caps, meta = {}, {}
            if cap.is_file():
                d = json.loads(cap.read_text(encoding="utf-8"))
                caps = captions_from(d)
                meta = {
                    k: v
                    for k, v in d.items()
                    if isinstance(v, (int, float, str))
                    and k not in ("prompt", "prompt_medium", "prompt_short")
                }
            yield p, safe_key(f"ma4k/{p.stem}"), "multiaspect", caps, meta
        return
    json_dir = root / "data_jsons" if (root / "data_jsons").is_dir() else root
    for js in sorted(json_dir.glob("*.json")):
        records = _json_records(js)
        for idx, rec in enumerate(records):
            uid = js.stem if len(records) == 1 else f"{js.stem}_{idx:06d}"
            meta = {k: v for k, v in rec.items() if isinstance(v, (int, float, str, bool)) or v is None}
            meta.update(source_json=js.name, source_index=idx)
            p = None
            if isinstance(rec.get("image_path"), str):
                p = Path(rec["image_path"])
                p = p if p.is_absolute() else root / p
            else:
                hits = sorted((root / "image").glob(f"{uid}.*")) if (root / "image").is_dir() else []
                p = hits[0] if hits else None
            if p is None or not p.is_file():
                missing.append(
                    dropped(
                        rec.get("image_url", f"{js.name}#{idx}"),
                        "ingest",
                        "not_downloaded",
                        f"no local image for {js.name} record {idx}",
                    )
                )
                continue
            yield p, safe_key(f"ma4k/{uid}"), "multiaspect", captions_from(rec), meta


def ingest(
    work, folders=(), lists=(), multiaspect=(), max_pixels: int | None = None, verbose: bool = True,
    pdfs=(),
) -> dict:
    """Probe every candidate; write ``W/ingest.jsonl`` and ``W/ingest.dropped.jsonl``.

    ``pdfs``: the PDF inputs of render-pdfs; PDFs found in ``folders`` under them are left to it,
    other PDFs there are dropped with the hint to pass them with ``--pdfs``. Returns counts."""
    from pid.data.transforms import DEFAULT_MAX_PIXELS

    work = Path(work)
    drops: list[dict] = []
    cands: list[tuple] = []
    for f in folders:
        cands += folder_candidates(Path(f), drops, pdfs)
    for lf in lists:
        cands += list_candidates(Path(lf))
    for root in multiaspect:
        cands += multiaspect_candidates(Path(root), drops)
    records = []
    for path, key, source, caps, meta in bar(cands, "ingest", enabled=verbose):
        problem = path_problem(path)
        if problem is not None:
            drops.append(dropped(path, "ingest", *problem))
            continue
        try:
            info = probe_image_file(path, max_pixels or DEFAULT_MAX_PIXELS)
        except Rejected as e:
            drops.append(dropped(path, "ingest", e.reason, e.detail))
            continue
        records.append({"key": key, "source": source, "captions": caps, "meta": meta, "scores": {}, **info})
    unique_keys(records)
    write_jsonl(work / "ingest.jsonl", records)
    write_dropped(work, "ingest", drops)
    converted = sum(1 for r in records if r.get("convert"))
    summary("ingest", len(records), drops, {"to convert": converted, "out": work / "ingest.jsonl"}, verbose)
    return {"kept": len(records), "dropped": len(drops)}
