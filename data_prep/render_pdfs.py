"""render-pdfs: PDF pages → PNG images + records (``W/pdf.jsonl``), with pypdfium2.

Every page (or ``--max-pages`` spread over the document) is rendered at ``--dpi`` on white and
gets the fixed ``--caption``. A page whose render would exceed ``max_pixels`` is rendered at a
reduced dpi decided from its size before any pixel is drawn (``pdf_pages.render_plan``: time and
memory stay bounded for any page size); its record's ``meta`` holds the dpi used and
``render_capped``, saying why. Dropped with a reason: ``encrypted_pdf`` (password needed),
``broken_pdf`` (cannot be parsed), ``empty_pdf`` (no pages), ``empty_page`` (blank render, or a
page without area), ``render_failed``. PNGs are written atomically and re-used on a re-run.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from PIL import Image

from data_prep.progress import bar, summary
from data_prep.records import dropped, safe_key, unique_keys, write_dropped, write_jsonl
from pid.data.io import open_image
from data_prep import pdf_pages

DEFAULT_CAPTION = "a page of a typeset document"


def find_pdf_files(inputs) -> list[Path]:
    out = []
    for i in inputs:
        p = Path(i)
        if p.is_dir():
            out += pdf_pages.find_pdfs([p])
        elif p.is_file():
            out.append(p.resolve())
    return sorted(set(out))


def _open(path: Path):
    import pypdfium2 as pdfium

    try:
        return pdf_pages.open_pdf(path), None
    except pdfium.PdfiumError as e:
        msg = str(e).lower()
        return None, ("encrypted_pdf" if "password" in msg or "security" in msg else "broken_pdf", str(e))
    except Exception as e:  # noqa: BLE001 - gzip errors, OSError, …
        return None, ("broken_pdf", f"{type(e).__name__}: {e}")


def _pixel_std(rgb) -> float:
    """Pixel standard deviation, from at most ~2 M pixels (a strided sample keeps memory bounded)."""
    step = max(1, int((rgb.shape[0] * rgb.shape[1] / 2e6) ** 0.5))
    return float(rgb[::step, ::step].std(dtype="float32"))


def render_pdfs(
    work,
    inputs,
    dpi: float = 150.0,
    caption: str = DEFAULT_CAPTION,
    max_pages: int | None = None,
    blank_std: float = 1.0,
    verbose: bool = True,
    max_pixels: int = pdf_pages.MAX_RENDER_PIXELS,
) -> dict:
    """Render the pages of the PDFs in ``inputs`` (files or folders) to ``W/pdf_pages/*.png`` and
    records in ``W/pdf.jsonl``; problems go to ``W/render_pdfs.dropped.jsonl``. Returns counts."""
    work = Path(work)
    out_dir = work / "pdf_pages"
    out_dir.mkdir(parents=True, exist_ok=True)
    records, drops = [], []
    for path in bar(find_pdf_files(inputs), "render-pdfs", enabled=verbose):
        doc, err = _open(path)
        if err:
            drops.append(dropped(path, "render_pdfs", *err))
            continue
        try:
            n = len(doc)
            pages = list(range(n)) if not max_pages else pdf_pages.spread_pages(n, max_pages)
            if n == 0:
                drops.append(dropped(path, "render_pdfs", "empty_pdf", "no pages"))
            tag = hashlib.sha1(str(path).encode()).hexdigest()[:6]
            stem = safe_key(path.name.split(".pdf")[0])
            for page in pages:
                key = f"pdf_{stem}_{tag}_p{page + 1:04d}"
                png = out_dir / f"{key}.png"
                where = f"{path}#page={page + 1}"
                try:
                    plan = pdf_pages.render_plan(doc[page], dpi, max_pixels)
                except ValueError as e:
                    drops.append(dropped(where, "render_pdfs", "empty_page", str(e)))
                    continue
                except Exception as e:  # noqa: BLE001
                    drops.append(dropped(where, "render_pdfs", "render_failed", f"{type(e).__name__}: {e}"))
                    continue
                if not png.is_file():
                    try:
                        rgb, _ = pdf_pages.render_pdf_page(doc[page], dpi, max_pixels)
                    except Exception as e:  # noqa: BLE001
                        drops.append(
                            dropped(
                                f"{path}#page={page + 1}",
                                "render_pdfs",
                                "render_failed",
                                f"{type(e).__name__}: {e}",
                            )
                        )
                        continue
                    if rgb.size == 0 or _pixel_std(rgb) < blank_std:
                        drops.append(
                            dropped(f"{path}#page={page + 1}", "render_pdfs", "empty_page", "blank page")
                        )
                        continue
                    tmp = png.with_name(png.name + ".tmp")
                    Image.fromarray(rgb).save(tmp, format="PNG", compress_level=6)
                    os.replace(tmp, png)
                data = png.read_bytes()
                with open_image(data) as im:
                    w, h = im.size
                meta = {"pdf": str(path), "page": page + 1, "dpi": round(plan["dpi"], 3), "pages": n}
                if "capped" in plan:
                    meta.update(dpi_requested=dpi, render_capped=plan["capped"])
                records.append({
                    "key": key, "source": "pdf", "path": str(png.resolve()), "width": w, "height": h,
                    "format": "PNG", "mode": "RGB", "orientation": 1, "bytes": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(), "convert": None,
                    "captions": {"long": caption}, "scores": {},
                    "meta": meta,
                })  # fmt: skip
        finally:
            doc.close()
    unique_keys(records)
    write_jsonl(work / "pdf.jsonl", records)
    write_dropped(work, "render_pdfs", drops)
    summary("render-pdfs", len(records), drops, {"pages dir": out_dir}, verbose)
    return {"kept": len(records), "dropped": len(drops)}
