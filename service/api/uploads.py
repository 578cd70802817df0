"""Streams a multipart upload to storage, enforcing the size cap while reading."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from schemas.errors import ErrorCode, LongdocError
from service.store.storage import LocalBlobWriter, LocalStorage

if TYPE_CHECKING:  # the library defines it for type checkers only
    from python_multipart.multipart import MultipartCallbacks

MAX_FIELD_BYTES = 4096  # small text fields (password); anything longer is refused


@dataclass
class UploadedFile:
    key: str
    size: int
    head: bytes
    filename: str | None


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    header_field: bytes = b""
    header_value: bytes = b""
    headers: dict[str, bytes] = field(default_factory=dict)


class _Receiver:
    def __init__(self, storage: LocalStorage, max_bytes: int) -> None:
        self.storage, self.max_bytes = storage, max_bytes
        self.part = _Part()
        self.fields: dict[str, str] = {}
        self.file: UploadedFile | None = None
        self._out: LocalBlobWriter | None = None
        self._head = b""
        self._field_buf = b""

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
        setattr(self.part, attr, getattr(self.part, attr) + data)

    def on_part_begin(self) -> None:
        self.part = _Part()

    def on_header_end(self) -> None:
        self.part.headers[self.part.header_field.decode("latin-1").lower()] = self.part.header_value
        self.part.header_field = self.part.header_value = b""

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self.part.headers.get("content-disposition", b""))
        self.part.name = params.get(b"name", b"").decode("utf-8", "replace")
        raw_filename = params.get(b"filename")
        self.part.filename = raw_filename.decode("utf-8", "replace") if raw_filename else None
        if self.part.name == "file":
            if self.file is not None or self._out is not None:
                raise LongdocError(ErrorCode.INVALID_REQUEST, "send exactly one 'file' field")
            self._out = self.storage.writer()
        self._field_buf = b""

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._out is None:
            self._field_buf += chunk
            if len(self._field_buf) > MAX_FIELD_BYTES:
                raise LongdocError(ErrorCode.INVALID_REQUEST, f"field '{self.part.name}' is too long")
            return
        if self._out.size + len(chunk) > self.max_bytes:
            raise LongdocError(ErrorCode.FILE_TOO_LARGE,
                           f"the file is larger than the limit of {self.max_bytes} bytes")
        if len(self._head) < 64:
            self._head += chunk[: 64 - len(self._head)]
        self._out.write(chunk)

    def on_part_end(self) -> None:
        if self._out is None:
            self.fields[self.part.name] = self._field_buf.decode("utf-8", "replace")
            return
        size = self._out.size
        key = self._out.commit()
        self._out = None
        self.file = UploadedFile(key, size, self._head, self.part.filename)

    def cleanup(self) -> None:
        if self._out is not None:
            self._out.abort()


async def receive_upload(
    request: Request, storage: LocalStorage, max_bytes: int
) -> tuple[UploadedFile, dict[str, str]]:
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise LongdocError(ErrorCode.INVALID_REQUEST,
                           "send the document as multipart/form-data, field 'file'")
    declared = request.headers.get("content-length")
    # Refuse early when the client says up front that the body is too big (multipart framing
    # adds a little, so leave room for it).
    if declared and declared.isdigit() and int(declared) > max_bytes + 64 * 1024:
        raise LongdocError(ErrorCode.FILE_TOO_LARGE,
                       f"the file is larger than the limit of {max_bytes} bytes")
    receiver = _Receiver(storage, max_bytes)
    parser = MultipartParser(params[b"boundary"], receiver.callbacks())
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    finally:
        receiver.cleanup()
    if receiver.file is None:
        raise LongdocError(ErrorCode.INVALID_REQUEST, "the multipart body has no 'file' field")
    return receiver.file, receiver.fields
