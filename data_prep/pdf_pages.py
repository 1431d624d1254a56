"""PDF pages as training images: find real PDFs, generate text-rich ones, render pages.

Rendering uses pypdfium2 (Apache-2.0/BSD, self-contained); generation uses
reportlab. Text for generated documents is real prose found offline: the licence
texts Debian ships in /usr/share/common-licenses, else the docstrings of Python's
standard library.
"""

from __future__ import annotations

import gzip
import importlib
import inspect
import math
import os
import re
from pathlib import Path

import numpy as np

DEFAULT_PDF_DIRS = ("/usr/share/doc/texlive-doc", "/usr/share/doc")
LICENSE_DIR = Path("/usr/share/common-licenses")
_STDLIB_MODULES = (
    "argparse", "collections", "functools", "itertools", "json", "logging", "pathlib", "random",
    "statistics", "string", "textwrap", "threading", "typing", "unittest", "zipfile", "decimal",
    "fractions", "heapq", "bisect", "csv", "datetime", "difflib", "shutil", "subprocess",
)  # fmt: skip


def find_pdfs(dirs=DEFAULT_PDF_DIRS) -> list[Path]:
    """Real PDF files (``.pdf`` or ``.pdf.gz``) under ``dirs``, deduplicated and sorted."""
    found: set[Path] = set()
    for d in dirs:
        d = Path(d)
        if d.is_dir():
            for p in d.rglob("*"):
                name = p.name.lower()
                if (name.endswith(".pdf") or name.endswith(".pdf.gz")) and p.is_file():
                    found.add(p.resolve())
    return sorted(found)


def open_pdf(path: str | os.PathLike):
    """Open a PDF (gzip-compressed allowed) as a ``pypdfium2.PdfDocument``."""
    import pypdfium2 as pdfium

    path = Path(path)
    if path.name.lower().endswith(".gz"):
        return pdfium.PdfDocument(gzip.decompress(path.read_bytes()))
    return pdfium.PdfDocument(str(path))


def page_count(path: str | os.PathLike) -> int:
    """Number of pages of a PDF."""
    pdf = open_pdf(path)
    try:
        return len(pdf)
    finally:
        pdf.close()


MAX_RENDER_PIXELS = 32_000_000  # ~5660² px: an A2 page at 300 dpi; 128 MB as the renderer's BGRA


def render_scale(width_pt: float, height_pt: float, dpi: float, max_pixels: int = MAX_RENDER_PIXELS) -> float:
    """Pixels per PDF point for a page: ``dpi / 72``, reduced so the render holds at most ``max_pixels``.

    Raises ``ValueError`` for a page without area (zero, negative or non-finite size).
    """
    area = float(width_pt) * float(height_pt)
    if not (area > 0 and math.isfinite(area)):
        raise ValueError(f"the page has no area ({width_pt} x {height_pt} pt)")
    scale = min(dpi / 72.0, math.sqrt(max_pixels / area))
    while scale > 0 and math.ceil(width_pt * scale) * math.ceil(height_pt * scale) > max_pixels:
        scale *= 0.999  # the renderer rounds sides up
    return scale


def render_pdf_page(page, dpi: float = 150.0, max_pixels: int = MAX_RENDER_PIXELS) -> tuple[np.ndarray, dict]:
    """Render a ``pypdfium2`` page on white: ((H, W, 3) uint8 RGB, info).

    The pixel area is capped at ``max_pixels`` *before* rendering (time and memory stay bounded for
    any page size): ``info`` holds the ``dpi`` actually used and, when it was reduced, ``capped``, a
    sentence saying from what and why. Raises ``ValueError`` for a page without area.
    """
    info = render_plan(page, dpi, max_pixels)
    bitmap = page.render(scale=info["dpi"] / 72.0, fill_color=(255, 255, 255, 255))
    return np.asarray(bitmap.to_pil().convert("RGB"), dtype=np.uint8).copy(), info


def render_plan(page, dpi: float = 150.0, max_pixels: int = MAX_RENDER_PIXELS) -> dict:
    """How ``render_pdf_page`` renders a ``pypdfium2`` page, from its size only: ``{"dpi": used}``
    plus ``"capped": <why>`` when the requested ``dpi`` was reduced. Raises ``ValueError`` for a page
    without area."""
    w_pt, h_pt = page.get_size()
    scale = render_scale(w_pt, h_pt, dpi, max_pixels)
    info: dict = {"dpi": scale * 72.0}
    if scale < dpi / 72.0:
        full = (round(w_pt * dpi / 72.0), round(h_pt * dpi / 72.0))
        info["capped"] = (f"page {w_pt:.0f}x{h_pt:.0f} pt at {dpi:g} dpi would be {full[0]}x{full[1]} px; "
                          f"rendered at {info['dpi']:.1f} dpi to stay within {max_pixels} px")  # fmt: skip
    return info


def render_page(
    path: str | os.PathLike, index: int, dpi: float = 150.0, max_pixels: int = MAX_RENDER_PIXELS
) -> np.ndarray:
    """Render page ``index`` at ``dpi`` (capped at ``max_pixels``, see ``render_pdf_page``) to an
    (H, W, 3) uint8 RGB array (white background)."""
    pdf = open_pdf(path)
    try:
        return render_pdf_page(pdf[index], dpi, max_pixels)[0]
    finally:
        pdf.close()


def spread_pages(n_pages: int, k: int) -> list[int]:
    """``k`` page indices spread evenly over a document's interior (title pages are mostly blank)."""
    if n_pages <= 0 or k <= 0:
        return []
    if k >= n_pages:
        return list(range(n_pages))
    return sorted({min(n_pages - 1, (i + 1) * n_pages // (k + 1)) for i in range(k)})


def offline_prose() -> list[tuple[str, str]]:
    """(title, text) pairs of real English prose available without a network."""
    docs: list[tuple[str, str]] = []
    if LICENSE_DIR.is_dir():
        for p in sorted(LICENSE_DIR.iterdir()):
            if p.is_file() and p.stat().st_size > 4000:
                docs.append((p.name, p.read_text(encoding="utf-8", errors="replace")))
    for name in _STDLIB_MODULES:
        try:
            doc = inspect.getdoc(importlib.import_module(name)) or ""
        except Exception:  # noqa: BLE001 - any stdlib oddity just skips a text
            continue
        if len(doc) > 200:
            docs.append((f"The {name} module", doc))
    return docs


def _paragraphs(text: str) -> list[str]:
    paras = [re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", text)]
    return [p for p in paras if len(p) > 30]


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# (body font, body size pt, columns): the variety of small typography a decoder must keep legible.
GENERATED_STYLES = (
    ("Times-Roman", 9.0, 1),
    ("Helvetica", 7.0, 2),
    ("Courier", 8.0, 1),
    ("Times-Roman", 6.5, 2),
    ("Helvetica", 10.0, 1),
)


def generate_text_pdf(path: str | os.PathLike, style_index: int = 0, max_pages: int = 3) -> Path:
    """Write a text-rich PDF (headings, paragraphs, a table) of about ``max_pages`` A4 pages."""
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.platypus import (
        BaseDocTemplate, Frame, PageTemplate, Paragraph, Spacer, Table, TableStyle,
    )  # fmt: skip

    font, size, columns = GENERATED_STYLES[style_index % len(GENERATED_STYLES)]
    prose = offline_prose()
    if not prose:
        raise RuntimeError("no offline text found to typeset")
    rot = style_index % len(prose)
    prose = prose[rot:] + prose[:rot]

    sheet = getSampleStyleSheet()
    body = ParagraphStyle("body", parent=sheet["BodyText"], fontName=font, fontSize=size, leading=size * 1.22)
    h1 = sheet["Heading1"]
    h2 = ParagraphStyle("h2", parent=sheet["Heading2"], fontSize=max(size + 2.5, 9))

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = A4
    margin = 18 * mm
    gap = 6 * mm
    col_w = (width - 2 * margin - (columns - 1) * gap) / columns
    frames = [
        Frame(margin + i * (col_w + gap), margin, col_w, height - 2 * margin, id=f"c{i}")
        for i in range(columns)
    ]
    doc = BaseDocTemplate(str(path), pagesize=A4, title=f"sample document {style_index}", invariant=1)
    doc.addPageTemplates([PageTemplate(id="main", frames=frames)])

    story = [Paragraph(f"Collected texts, volume {style_index + 1}", h1)]
    budget = int(max_pages * (height - 2 * margin) * columns * col_w / (size * size * 0.55 * 1.22))
    used = 0
    for section, (title, text) in enumerate(prose, start=1):
        story.append(Paragraph(f"{section}. {_escape(title)}", h2))
        for para in _paragraphs(text):
            story.append(Paragraph(_escape(para), body))
            used += len(para)
            if used > budget:
                break
        if section == 1:
            rows = [["Item", "Value", "Note"]] + [
                [f"{i}", f"{(i * 37) % 101:.2f}", f"row {i} of a small table"] for i in range(1, 7)
            ]
            table = Table(rows, colWidths=[col_w * 0.2, col_w * 0.25, col_w * 0.5])
            table.setStyle(
                TableStyle(
                    [
                        ("FONT", (0, 0), (-1, -1), font, size),
                        ("GRID", (0, 0), (-1, -1), 0.4, colors.grey),
                        ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#dde6f0")),
                    ]
                )
            )
            story += [Spacer(1, 4), table, Spacer(1, 4)]
        if used > budget:
            break
    doc.build(story)
    return path
