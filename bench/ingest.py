"""Ingestion benchmark: PDFium + tiktoken against a pypdf-only pipeline, measured in one run.

    .venv/bin/python -m bench.ingest [--pages 1400] [--scans 60]

Prints a table and the ratios; docs/benchmarks.md records a run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.core.settings import get_settings
from service.core.tokens import count_text, get_encoding
from service.store.storage import LocalStorage
from tests.support import hostile
from tests.support.pdfgen import build_pdf, scan_jpeg, text_pdf
from workers.isolation import ChildUsage, run_isolated
from workers.parsing import ParseError, PdfOptions, parse_document

# The baselines: no memory cap.
LIMITS: dict[str, Any] = {"cpu_s": 300, "memory_bytes": 2 << 30, "wall_s": 600}


def child_peak(fn: Callable[[], object]) -> tuple[object, float, ChildUsage]:
    """Runs fn as the worker does (default limits); returns (outcome, seconds, usage)."""
    settings = get_settings()
    usage = ChildUsage()
    started = time.perf_counter()
    try:
        value = run_isolated(fn, cpu_s=settings.parse_cpu_seconds,
                             memory_bytes=settings.parse_memory_bytes,
                             wall_s=settings.parse_wall_seconds, usage=usage)
    except ParseError as exc:
        value = exc.code
    return value, time.perf_counter() - started, usage


def pdfium_pipeline(path: Path, storage: LocalStorage) -> int:
    pages = parse_document(str(path), "application/pdf", storage, PdfOptions(None, 100_000))
    return sum(p.text_tokens for p in pages)


def pypdf_pipeline(path: Path) -> int:
    from pypdf import PdfReader

    reader = PdfReader(str(path))
    return sum(count_text((page.extract_text() or "").replace("\r\n", "\n")) for page in reader.pages)


def best_of(n: int, fn: Callable[[], object]) -> tuple[object, float]:
    times, value = [], None
    for _ in range(n):
        started = time.perf_counter()
        value = run_isolated(fn, **LIMITS)
        times.append(time.perf_counter() - started)
    return value, min(times)


def photo_jpeg() -> bytes:
    """A 4000 x 3000 photo-like JPEG (noise over a gradient: no easy compression)."""
    import io
    import random

    from PIL import Image

    rng = random.Random(1)
    small = Image.new("RGB", (400, 300))
    small.putdata([(x % 256, (x * 7) % 256, rng.randrange(256)) for x in range(400 * 300)])
    out = io.BytesIO()
    small.resize((4000, 3000), Image.Resampling.BICUBIC).save(out, "JPEG", quality=90)
    return out.getvalue()


def full_decode(path: Path) -> None:
    """The baseline: decode every pixel, then downscale and encode as the model needs."""
    from PIL import Image, ImageOps

    from workers.parsing import encode_jpeg, useful_size

    with Image.open(path) as opened:
        img = ImageOps.exif_transpose(opened)
        encode_jpeg(img.resize(useful_size(*img.size), Image.Resampling.BICUBIC, reducing_gap=2.0))


def best_time(n: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def end_to_end(path: Path, runs: int) -> list[float]:
    from tests.support.stack import Stack, upload, wait_document

    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp)).start()
        try:
            key = stack.create_key("bench")["api_key"]
            times = []
            with stack.client(key) as client:
                for _ in range(runs):
                    started = time.perf_counter()
                    doc = upload(client, path).json()
                    ready = wait_document(client, doc["id"], 120)
                    times.append(time.perf_counter() - started)
                    assert ready["status"] == "ready", ready
            return times
        finally:
            stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pages", type=int, default=1400)
    parser.add_argument("--lines", type=int, default=42)
    parser.add_argument("--scans", type=int, default=60)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    get_encoding()
    work = Path(tempfile.mkdtemp(prefix="longdoc-bench-"))
    storage = LocalStorage(work / "store")
    big = work / "text.pdf"
    big.write_bytes(text_pdf(args.pages, lines=args.lines))
    scans = work / "scans.pdf"
    scans.write_bytes(build_pdf([("scan", scan_jpeg(i)) for i in range(args.scans)]))
    bomb = work / "bomb.pdf"
    bomb.write_bytes(hostile.flate_bomb())

    tokens, pdfium_s = best_of(args.runs, lambda: pdfium_pipeline(big, storage))
    pypdf_tokens, pypdf_s = best_of(1, lambda: pypdf_pipeline(big))
    print(f"text PDF: {args.pages} pages, {big.stat().st_size / 1e6:.1f} MB, {tokens} tokens")
    print(f"  PDFium + tiktoken (extract + count, best of {args.runs}): {pdfium_s:.2f} s")
    print(f"  pypdf + tiktoken (baseline, same run):          {pypdf_s:.2f} s  ({pypdf_tokens} tokens)")
    print(f"  ratio pypdf / PDFium: {pypdf_s / pdfium_s:.1f}x")

    # One process = one core: rendering and JPEG encoding of scanned pages.
    _, scan_s = best_of(1, lambda: len(parse_document(str(scans), "application/pdf", storage,
                                                      PdfOptions(None, 100_000))))
    print(f"scanned pages: {args.scans} in {scan_s:.2f} s = {args.scans / scan_s:.0f} pages/s on one core")

    photo = work / "photo.jpg"
    photo.write_bytes(photo_jpeg())
    ours = best_time(5, lambda: parse_document(str(photo), "image/jpeg", storage,
                                               PdfOptions(None, 10)))
    full = best_time(5, lambda: full_decode(photo))
    print(f"12-megapixel JPEG to a model-ready page: {ours * 1000:.0f} ms with draft(), "
          f"{full * 1000:.0f} ms decoding every pixel first (ratio {full / ours:.1f}x)")

    limit = get_settings().parse_memory_bytes >> 20
    print(f"peak memory of a parsing process (private; RSS incl. pages shared with the worker;"
          f" limit {limit} MB private):")
    for name, fn in (("flate bomb (4 GB inflated)", lambda: pdfium_pipeline(bomb, storage)),
                     (f"{args.scans} scanned pages", lambda: pdfium_pipeline(scans, storage)),
                     (f"{args.pages}-page text PDF", lambda: pdfium_pipeline(big, storage))):
        value, seconds, usage = child_peak(fn)
        print(f"  {name:28} {usage.peak_private_bytes / 2**20:5.0f} MB private "
              f"{usage.peak_rss_bytes / 2**20:5.0f} MB RSS  ({seconds:.2f} s, outcome: {value})")

    times = end_to_end(big, args.runs)
    print(f"upload -> ready through API and worker, {args.pages} pages: median "
          f"{statistics.median(times):.2f} s (runs: {', '.join(f'{t:.2f}' for t in times)})")


if __name__ == "__main__":
    main()
