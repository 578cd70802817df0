"""Writes real PDFs for tests and benchmarks: text pages (Helvetica) and scanned pages (JPEG)."""

from __future__ import annotations

import io
import random
from typing import cast

from PIL import Image, ImageDraw

WORDS = (
    "contract", "invoice", "amount", "party", "agreement", "clause", "payment", "delivery", "term",
    "notice", "law", "section", "schedule", "total", "tax", "date", "signature", "liability",
    "warranty", "supplier", "customer",
)


def _text_stream(lines: list[str], invisible: bool = False) -> bytes:
    # Render mode 3 draws nothing: the invisible text layer OCR tools put over a scan.
    out = [b"BT 3 Tr /F1 10 Tf 12 TL 50 760 Td" if invisible else b"BT /F1 10 Tf 12 TL 50 760 Td"]
    for line in lines:
        safe = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        out.append(b"(" + safe.encode("latin-1", "replace") + b") '")
    out.append(b"ET")
    return b"\n".join(out)


def page_lines(seed: int, lines: int = 60, words: int = 11) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) + f" {seed}-{i}." for i in range(lines)]


def scan_jpeg(seed: int, size: tuple[int, int] = (1275, 1650)) -> bytes:
    """A page-like greyscale image: lines of dark strokes, as a scanner would make."""
    img = Image.new("L", size, 250)
    draw = ImageDraw.Draw(img)
    rng = random.Random(seed)
    for y in range(80, size[1] - 80, 28):
        x = 80
        while x < size[0] - 120:
            w = rng.randint(20, 90)
            draw.rectangle([x, y, x + w, y + 12], fill=rng.randint(20, 80))
            x += w + 14
    out = io.BytesIO()
    img.save(out, "JPEG", quality=70)
    return out.getvalue()


def build_pdf(pages: list[tuple[str, object]]) -> bytes:
    """pages: ("text", [lines]), ("scan", jpeg) or ("ocr", (jpeg, [lines])). Returns the PDF."""
    objects: list[bytes] = [b"", b"", b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica "
                            b"/Encoding /WinAnsiEncoding >>"]
    kids = []
    for kind, payload in pages:
        if kind == "text":
            stream = _text_stream(cast(list[str], payload))
            objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
            content = len(objects)
            objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources "
                           b"<< /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % content)
        else:
            jpeg, ocr_lines = cast(tuple[bytes, "list[str] | None"],
                                   payload if kind == "ocr" else (payload, None))
            with Image.open(io.BytesIO(jpeg)) as img:
                w, h = img.size
            objects.append(b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace "
                           b"/DeviceGray /BitsPerComponent 8 /Filter /DCTDecode /Length %d >>\n"
                           b"stream\n" % (w, h, len(jpeg)) + jpeg + b"\nendstream")
            image = len(objects)
            draw = b"q 612 0 0 792 0 0 cm /Im1 Do Q"
            if ocr_lines:
                draw += b"\n" + _text_stream(ocr_lines, invisible=True)
            objects.append(b"<< /Length %d >>\nstream\n" % len(draw) + draw + b"\nendstream")
            content = len(objects)
            objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources "
                           b"<< /XObject << /Im1 %d 0 R >> /Font << /F1 3 0 R >> >> "
                           b"/Contents %d 0 R >>" % (image, content))
        kids.append(len(objects))
    objects[0] = b"<< /Type /Catalog /Pages 2 0 R >>"
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (
        b" ".join(b"%d 0 R" % k for k in kids), len(kids))
    out = io.BytesIO()
    out.write(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def text_pdf(pages: int, lines: int = 60, words: int = 11, seed: int = 0) -> bytes:
    return build_pdf([("text", page_lines(seed + i, lines, words)) for i in range(pages)])
