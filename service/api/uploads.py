"""Request bodies read as streams, with every limit acting while they arrive.

Multipart uploads go to a temporary blob (filed under their hash only once the document row is
about to commit); JSON bodies are read only after the caller is authenticated, up to
``LONGDOC_MAX_JSON_BYTES``, and parsed by Pydantic in strict mode (bounded nesting, finite
numbers, no type coercion).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel, ValidationError
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from schemas.errors import ErrorCode, LongdocError
from service.store.storage import BlobStore, BlobWriter

if TYPE_CHECKING:  # the library defines it for type checkers only
    from python_multipart.multipart import MultipartCallbacks

FIELDS = ("file", "password")  # the parts an upload may have
MAX_FIELD_BYTES = 4096  # a text field (the password)
MAX_HEADER_BYTES = 4096  # the headers of one part (a filename is kept to its first 255 characters)
MAX_BOUNDARY = 70  # RFC 2046 §5.1.1
MAX_FILENAME = 255

Body = TypeVar("Body", bound=BaseModel)


def _invalid(message: str) -> LongdocError:
    return LongdocError(ErrorCode.INVALID_MULTIPART, message)


@dataclass
class UploadedFile:
    """A received file, still temporary: ``commit`` files it under its hash."""

    writer: BlobWriter
    size: int
    head: bytes
    filename: str | None

    @property
    def sha256(self) -> str:
        return self.writer.hexdigest()

    def commit(self) -> str:
        return self.writer.commit()

    def abort(self) -> None:
        self.writer.abort()


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    header_field: bytes = b""
    header_value: bytes = b""
    header_bytes: int = 0
    headers: dict[str, bytes] = field(default_factory=dict)


class _Receiver:
    def __init__(self, storage: BlobStore, max_bytes: int) -> None:
        self.storage, self.max_bytes = storage, max_bytes
        self.part = _Part()
        self.fields: dict[str, str] = {}
        self.file: UploadedFile | None = None
        self._out: BlobWriter | None = None
        self._head = b""
        self._field_buf = b""
        self._field_bytes = 0

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": lambda d, s, e: self._add("header_field", d[s:e]),
            "on_header_value": lambda d, s, e: self._add("header_value", d[s:e]),
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }

    def _add(self, attr: str, data: bytes) -> None:
        self.part.header_bytes += len(data)
        if self.part.header_bytes > MAX_HEADER_BYTES:
            raise _invalid(f"the headers of a part are longer than {MAX_HEADER_BYTES} bytes")
        setattr(self.part, attr, getattr(self.part, attr) + data)

    def on_part_begin(self) -> None:
        self.part = _Part()

    def on_header_end(self) -> None:
        name = self.part.header_field.decode("latin-1").strip().lower()
        if not name:
            raise _invalid("a part has a header without a name")
        self.part.headers[name] = self.part.header_value
        self.part.header_field = self.part.header_value = b""

    def on_headers_finished(self) -> None:
        disposition, params = parse_options_header(self.part.headers.get("content-disposition", b""))
        if disposition != b"form-data":
            raise _invalid("every part needs 'Content-Disposition: form-data; name=...'")
        self.part.name = params.get(b"name", b"").decode("utf-8", "replace")
        if self.part.name not in FIELDS:
            raise LongdocError(ErrorCode.INVALID_REQUEST,
                               "an upload has the fields 'file' and, optionally, 'password'")
        if self.part.name in self.fields or (
                self.part.name == "file" and (self._out is not None or self.file is not None)):
            raise LongdocError(ErrorCode.INVALID_REQUEST, f"send one '{self.part.name}' field")
        raw_filename = params.get(b"filename")
        filename = (raw_filename.decode("utf-8", "replace").replace("\x00", "")
                    if raw_filename else None)
        self.part.filename = filename[:MAX_FILENAME] if filename else None
        if self.part.name == "file":
            self._out = self.storage.writer()
        self._field_buf = b""

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._out is None:
            self._field_buf += chunk
            self._field_bytes += len(chunk)
            if len(self._field_buf) > MAX_FIELD_BYTES:
                raise LongdocError(ErrorCode.INVALID_REQUEST,
                                   f"field '{self.part.name}' is longer than {MAX_FIELD_BYTES} bytes")
            return
        if self._out.size + len(chunk) + self._field_bytes > self.max_bytes:
            raise LongdocError(ErrorCode.FILE_TOO_LARGE,
                               f"the upload is larger than the limit of {self.max_bytes} bytes")
        if len(self._head) < 64:
            self._head += chunk[: 64 - len(self._head)]
        self._out.write(chunk)

    def on_part_end(self) -> None:
        if self._out is None:
            try:
                self.fields[self.part.name] = self._field_buf.decode("utf-8")
            except UnicodeDecodeError:
                raise LongdocError(ErrorCode.INVALID_REQUEST,
                                   f"field '{self.part.name}' is not UTF-8 text") from None
            return
        self.file = UploadedFile(self._out, self._out.size, self._head, self.part.filename)
        self._out = None

    async def flush(self) -> None:
        """Sends a full part to the store (S3) off the event loop, between two chunks."""
        out = self._out or (self.file.writer if self.file else None)
        if out is not None and out.pending:
            await asyncio.to_thread(out.flush)

    def cleanup(self) -> None:
        if self._out is not None:
            self._out.abort()
            self._out = None
        if self.file is not None:
            self.file.abort()
            self.file = None


async def receive_upload(
    request: Request, storage: BlobStore, max_bytes: int
) -> tuple[UploadedFile, dict[str, str]]:
    """The uploaded file (temporary until committed) and the text fields. Anything refused
    leaves no file behind."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data":
        raise LongdocError(ErrorCode.INVALID_REQUEST,
                           "send the document as multipart/form-data, field 'file'")
    boundary = params.get(b"boundary", b"")
    if not boundary or len(boundary) > MAX_BOUNDARY:
        raise _invalid(f"the multipart boundary must have 1 to {MAX_BOUNDARY} characters")
    declared = request.headers.get("content-length")
    # Refuse early when the client says up front that the body is too big (multipart framing
    # adds a little, so leave room for it).
    if declared and declared.isdigit() and int(declared) > max_bytes + 64 * 1024:
        raise LongdocError(ErrorCode.FILE_TOO_LARGE,
                           f"the upload is larger than the limit of {max_bytes} bytes")
    receiver = _Receiver(storage, max_bytes)
    parser = MultipartParser(boundary, receiver.callbacks())
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            await receiver.flush()
        parser.finalize()
        if receiver._out is not None or receiver.part.header_bytes and receiver.file is None:
            raise _invalid("the multipart body ends inside a part (no closing boundary)")
        if receiver.file is None:
            raise LongdocError(ErrorCode.INVALID_REQUEST, "the multipart body has no 'file' field")
    except FormParserError:
        receiver.cleanup()
        raise _invalid("the multipart body is malformed") from None
    except BaseException:
        receiver.cleanup()
        raise
    return receiver.file, receiver.fields


async def read_json(request: Request, model: type[Body], max_bytes: int) -> Body:
    """A JSON body, read up to ``max_bytes`` and validated strictly (call it once the caller is
    authenticated: nothing is read for an unknown key)."""
    return parse_json(await read_json_bytes(request, max_bytes), model)


async def read_json_bytes(request: Request, max_bytes: int) -> bytes:
    """The raw JSON body, read up to ``max_bytes``."""
    content_type, _ = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"application/json":
        raise LongdocError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, "send a JSON body (application/json)")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise LongdocError(ErrorCode.REQUEST_TOO_LARGE,
                           f"the JSON body is larger than the limit of {max_bytes} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise LongdocError(ErrorCode.REQUEST_TOO_LARGE,
                               f"the JSON body is larger than the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(raw: bytes, model: type[Body]) -> Body:
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise LongdocError(ErrorCode.INVALID_REQUEST, validation_message(exc)) from None


def validation_message(exc: ValidationError) -> str:
    """Where and what, never the submitted values."""
    parts = []
    for err in exc.errors(include_input=False)[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc or 'body'}: {err.get('msg')}")
    return "; ".join(parts) or "invalid request"
