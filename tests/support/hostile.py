"""Hostile and damaged files, generated: each must fail its own document, quickly and cleanly."""

from __future__ import annotations

import struct
import zlib

from tests.support.stack import CORPUS


def pdf_with_objects(objects: list[bytes], root: int = 1, extra_trailer: bytes = b"") -> bytes:
    """A PDF with a correct xref table over the given objects (numbered from 1)."""
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root %d 0 R %s>>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, root, extra_trailer, xref)
    return bytes(out)


def flate_bomb(gigabytes: int = 4) -> bytes:
    """A content stream that inflates to gigabytes, compressed twice so the file stays small."""
    chunk = b" " * (1 << 24)
    pieces = gigabytes * 64
    # After a full flush the compressor forgets the past, so each identical chunk compresses to
    # identical bytes: compress two, repeat the second, then write the true Adler-32.
    once = zlib.compressobj(9)
    first = once.compress(chunk) + once.flush(zlib.Z_FULL_FLUSH)
    repeat = once.compress(chunk) + once.flush(zlib.Z_FULL_FLUSH)
    tail = once.flush()[:-4]
    adler = 1
    for _ in range(pieces):
        adler = zlib.adler32(chunk, adler)
    inner = first + repeat * (pieces - 1) + tail + struct.pack(">I", adler)
    outer = zlib.compress(inner, 9)
    stream = (b"<< /Length %d /Filter [/FlateDecode /FlateDecode] >>\nstream\n" % len(outer)
              + outer + b"\nendstream")
    return pdf_with_objects([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
        stream,
    ])


def xref_prev_loop() -> bytes:
    """Two xref sections whose /Prev point at each other, and a broken startxref."""
    body = pdf_with_objects([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>",
    ])
    cut = body.index(b"xref\n")
    xref_a = cut
    section = b"xref\n0 1\n0000000000 65535 f \ntrailer\n<< /Size 4 /Root 1 0 R /Prev %d >>\n"
    first = section % (xref_a + 60)
    out = body[:cut] + first
    out += b" " * (xref_a + 60 - len(out)) + (section % xref_a) + b"startxref\n%d\n%%%%EOF\n" % xref_a
    return out


def nested_arrays(depth: int = 200_000) -> bytes:
    return pdf_with_objects([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Deep " + b"[" * depth
        + b"]" * depth + b" >>",
    ])


def self_referencing_page_tree() -> bytes:
    return pdf_with_objects([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [2 0 R 3 0 R] /Count 2 >>",
        b"<< /Type /Pages /Kids [2 0 R 3 0 R] /Parent 2 0 R /Count 2 >>",
    ])


def truncated_pdf() -> bytes:
    data = (CORPUS / "004-pdflatex-4-pages" / "pdflatex-4-pages.pdf").read_bytes()
    return data[: len(data) // 3]


def huge_png(width: int = 50_000, height: int = 50_000) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b""))


def truncated_jpeg() -> bytes:
    data = (CORPUS / "007-imagemagick-images" / "smile.jpg").read_bytes()
    return data[: len(data) // 2]
