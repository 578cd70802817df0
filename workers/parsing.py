"""Turns an uploaded file into pages: text with exact token counts, or an image the model reads.

Runs inside an isolated child process (see ``isolation``); everything here may be slow, crash or
blow up on hostile input without harming the worker.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, Protocol

from PIL import Image, ImageOps, ImageSequence
from pypdf.errors import PyPdfError

from schemas.errors import LongdocError
from service.core.pages import ExtractedPage, PageStore
from service.core.tokens import count_text, patch_scale
from service.store.storage import Source

PAGES_PER_PROCESS = 150  # below this, forking another parser costs more than it saves
MIN_TEXT_CHARS = 40  # fewer visible characters than this is no usable text layer
JPEG_QUALITY = 85
MAX_IMAGE_PIXELS = 120_000_000  # Pillow raises DecompressionBombError at twice this
# The patch cap of GPT-4.1 mini/nano: more pixels than 1536 patches of 32 x 32 buy nothing.
PATCH, MAX_PATCHES = 32, 1536
MODEL_IMAGE_FORMATS = {"JPEG", "PNG", "WEBP"}

PdfPage = Any  # a pypdfium2 page; pypdfium2 ships no type information

Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
warnings.simplefilter("error", Image.DecompressionBombWarning)


class ParseError(LongdocError):
    """The file cannot be read (the code says why); it fails its own document only."""


def useful_size(width: float, height: float) -> tuple[int, int]:
    """The size the model itself would shrink the image to: more pixels buy nothing, and any
    other size under the cap can cost more patches than the original would."""
    r = patch_scale(width, height, PATCH, MAX_PATCHES)
    return max(1, math.floor(width * r)), max(1, math.floor(height * r))


def normalise_text(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    lines = [line.rstrip() for line in text.split("\n")]
    return "\n".join(lines).strip()


def encode_jpeg(img: Image.Image) -> bytes:
    if img.mode not in ("RGB", "L"):
        if img.mode in ("RGBA", "LA", "P", "PA"):
            img = img.convert("RGBA")
            background = Image.new("RGB", img.size, (255, 255, 255))
            background.paste(img, mask=img.getchannel("A"))
            img = background
        else:
            img = img.convert("RGB")
    out = io.BytesIO()
    img.save(out, "JPEG", quality=JPEG_QUALITY, optimize=False)
    return out.getvalue()


def _image_page(storage: PageStore, data: bytes, size: tuple[int, int], media: str) -> ExtractedPage:
    key = storage.put_bytes(data)
    return ExtractedPage(kind="image", image=key, image_media_type=media, width=size[0],
                         height=size[1], image_bytes=len(data))


# ---------------------------------------------------------------- PDFs


class ProgressSink(Protocol):
    """Where a parse reports how far it has got (``isolation.PageProgress``)."""

    def set_total(self, pages: int) -> None: ...

    def page_done(self) -> None: ...


@dataclass
class PdfOptions:
    password: str | None
    max_pages: int
    render_all: bool = False  # render every page too (text pages keep their text)
    progress: ProgressSink | None = None


def _open_source(source: Source, password: str | None) -> tuple[Source | bytes, str | None]:
    """What PDFium should open: the file itself (a path, or a reader over the stored object),
    or pypdf's rebuild of a file PDFium refused."""
    import pypdfium2 as pdfium

    try:
        pdfium.PdfDocument(source, password=password).close()
        return source, password
    except pdfium.PdfiumError as exc:
        if getattr(exc, "err_code", None) == 4:  # FPDF_ERR_PASSWORD
            if password:
                raise ParseError("pdf_password_incorrect", "the password does not open this PDF") from None
            raise ParseError("pdf_encrypted",
                             "the PDF is encrypted: upload it again with its 'password'") from None
    try:
        rebuilt = _rebuilt_with_pypdf(source, password)
    except ParseError:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError,
            RecursionError, OSError, AssertionError) as exc:
        raise ParseError("document_unreadable",
                         f"the PDF is damaged and cannot be read ({type(exc).__name__})") from None
    if rebuilt is None:
        raise ParseError("document_unreadable", "the PDF is damaged: no page could be recovered")
    try:
        pdfium.PdfDocument(rebuilt).close()
    except pdfium.PdfiumError:
        raise ParseError("document_unreadable", "the PDF is damaged and cannot be read") from None
    return rebuilt, None


def render_page(page: PdfPage, storage: PageStore) -> ExtractedPage:
    width, height = page.get_size()
    target = useful_size(width * 4, height * 4)  # start from 288 dpi, come down to the cap
    scale = min(target[0] / width, target[1] / height)
    bitmap = page.render(scale=scale, may_draw_forms=True)
    img = bitmap.to_pil()
    data = encode_jpeg(img)
    return _image_page(storage, data, img.size, "image/jpeg")


def render_size(page: PdfPage) -> tuple[int, int]:
    width, height = page.get_size()
    target = useful_size(width * 4, height * 4)
    scale = min(target[0] / width, target[1] / height)
    return max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))


def _pages_in_range(source: Source | bytes, password: str | None, first: int, stop: int,
                    storage: PageStore, options: PdfOptions) -> list[ExtractedPage]:
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument(source, password=password)
    pages = []
    try:
        for index in range(first, stop):
            page = pdf[index]
            try:
                textpage = page.get_textpage()
                text = normalise_text(textpage.get_text_bounded())
                textpage.close()
                visible = sum(1 for ch in text if not ch.isspace())
                if visible < MIN_TEXT_CHARS and _has_graphics(page):
                    extracted = render_page(page, storage)  # a scan: the image is the page
                elif options.render_all:
                    # Text stays the page's reading; the render is there for pages_as_images.
                    extracted = render_page(page, storage)
                    extracted.kind, extracted.text = "text" if visible else "empty", text
                else:
                    w, h = render_size(page)
                    kind = "text" if visible else "empty"
                    extracted = ExtractedPage(kind=kind, text=text, width=w, height=h)
                pages.append(extracted)
                if options.progress is not None:
                    options.progress.page_done()
            finally:
                page.close()
        return pages
    finally:
        pdf.close()


def parse_pdf(path: Source, storage: PageStore, options: PdfOptions) -> list[ExtractedPage]:
    import pypdfium2 as pdfium

    source, password = _open_source(path, options.password)
    pdf = pdfium.PdfDocument(source, password=password)
    count = len(pdf)
    pdf.close()
    if count > options.max_pages:
        raise ParseError("document_too_large",
                         f"the PDF has {count} pages; the limit is {options.max_pages}")
    if count == 0:
        raise ParseError("document_unreadable", "the PDF has no pages")
    if options.progress is not None:
        options.progress.set_total(count)
    # PDFium spends ~1 ms a page building text: long documents are cut across the cores, each
    # part in its own forked process (PDFium is never shared between threads).
    parts = max(1, min(os.cpu_count() or 1, count // PAGES_PER_PROCESS))
    bounds = [round(count * i / parts) for i in range(parts + 1)]
    jobs = [partial(_pages_in_range, source, password, bounds[i], bounds[i + 1], storage, options)
            for i in range(parts)]
    if parts == 1:
        return jobs[0]()
    from workers.isolation import fork_map

    def as_rows(job: Callable[[], list[ExtractedPage]]) -> Callable[[], list[dict[str, Any]]]:
        return lambda: [asdict(p) for p in job()]

    results = fork_map([as_rows(job) for job in jobs[1:]])
    pages = jobs[0]()
    for result in results():
        pages.extend(ExtractedPage(**raw) for raw in result)
    return pages


def _has_graphics(page: PdfPage) -> bool:
    """Images, drawings or form fields: what a short text layer would leave out."""
    import pypdfium2.raw as pdfium_c

    kinds = [pdfium_c.FPDF_PAGEOBJ_IMAGE, pdfium_c.FPDF_PAGEOBJ_PATH, pdfium_c.FPDF_PAGEOBJ_SHADING]
    return any(True for _ in page.get_objects(filter=kinds, max_depth=4))


def _rebuilt_with_pypdf(path: Source, password: str | None) -> bytes | None:
    """PDFium refused the file: pypdf's lenient parser rebuilds what it can into a clean PDF.

    When the page tree itself is gone, the surviving page objects are collected (the first page
    of a linearized file first, then by object number).
    """
    from pypdf import PageObject, PdfReader, PdfWriter
    from pypdf.generic import DictionaryObject, IndirectObject

    reader = PdfReader(path, strict=False)
    if reader.is_encrypted and not reader.decrypt(password or ""):
        raise ParseError("pdf_password_incorrect" if password else "pdf_encrypted",
                         "the PDF is encrypted and cannot be opened")
    writer = PdfWriter()
    try:
        for page in reader.pages:
            writer.add_page(page)
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError):
        writer = PdfWriter()
        numbers = sorted({n for gen in reader.xref.values() for n in gen} | set(reader.xref_objStm))
        first = None
        with contextlib.suppress(PyPdfError, ValueError, KeyError, TypeError, AttributeError,
                                 IndexError):  # the linearization dictionary names page 1
            head = reader.get_object(IndirectObject(numbers[0], 0, reader))
            first = int(head.get("/O", -1)) if isinstance(head, DictionaryObject) else None
        found = []
        for number in numbers:
            try:
                obj = reader.get_object(IndirectObject(number, 0, reader))
            except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError):
                continue
            if isinstance(obj, DictionaryObject) and obj.get("/Type") == "/Page":
                found.append((number != first, number, obj))
        for _, number, obj in sorted(found, key=lambda item: item[:2]):
            page = PageObject(pdf=reader, indirect_reference=IndirectObject(number, 0, reader))
            page.update({k: v for k, v in obj.items() if k != "/Parent"})
            writer.add_page(page)
    if not writer.pages:
        return None
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


# ---------------------------------------------------------------- images


def _frames(img: Image.Image, media_type: str) -> Iterator[Image.Image]:
    if media_type == "image/tiff":
        yield from ImageSequence.Iterator(img)
    else:
        yield img  # GIF and the rest: the first frame


def parse_image(path: Source, media_type: str, storage: PageStore, max_pages: int) -> list[ExtractedPage]:
    if media_type in ("image/heif", "image/avif"):
        try:
            from pillow_heif import register_heif_opener

            register_heif_opener()
        except ImportError:
            raise ParseError("unsupported_media_type", "HEIF images are not supported here") from None
    try:
        with Image.open(path) as img:
            pages = []
            for index, frame in enumerate(_frames(img, media_type)):
                if index >= max_pages:
                    raise ParseError("document_too_large",
                                     f"the image has more than {max_pages} frames")
                pages.append(_image_frame(frame, img.format or "", storage, path, index == 0))
            return pages
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ParseError("image_too_large", f"the image has too many pixels: {exc}") from None
    except ParseError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ParseError("document_unreadable",
                         f"the image is damaged or truncated ({type(exc).__name__})") from None


def _read_all(source: Source) -> bytes:
    if isinstance(source, str):
        with open(source, "rb") as fh:
            return fh.read()
    source.seek(0)
    return source.read()


def _image_frame(frame: Image.Image, fmt: str, storage: PageStore, path: Source,
                 first: bool) -> ExtractedPage:
    width, height = frame.size
    target = useful_size(width, height)
    orientation = frame.getexif().get(0x0112, 1) if hasattr(frame, "getexif") else 1
    if first and fmt in MODEL_IMAGE_FORMATS and target == (width, height) and orientation == 1:
        frame.load()  # a truncated file fails here, not at the model
        data = _read_all(path)  # after load: Pillow may still be reading the same stream
        return _image_page(storage, data, (width, height), Image.MIME[fmt])
    if fmt == "JPEG":
        frame.draft("RGB", target)  # decode at a reduced scale: far faster for big photos
    frame = ImageOps.exif_transpose(frame) or frame
    width, height = frame.size
    target = useful_size(width, height)
    if target != (width, height):
        frame = frame.resize(target, Image.Resampling.BICUBIC, reducing_gap=2.0)
    data = encode_jpeg(frame)
    return _image_page(storage, data, frame.size, "image/jpeg")


def parse_document(
    path: Source, media_type: str, storage: PageStore, options: PdfOptions
) -> list[ExtractedPage]:
    """``path``: a local path, or a seekable reader (``BlobStore.source``)."""
    if media_type == "application/pdf":
        pages = parse_pdf(path, storage, options)
    else:
        pages = parse_image(path, media_type, storage, options.max_pages)
    if all(p.kind == "empty" for p in pages):
        raise ParseError("document_empty", "the document has no text and nothing to see on any page")
    for page in pages:
        page.text_tokens = count_text(page.text) if page.kind == "text" else 0
    return pages
