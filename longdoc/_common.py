"""What the sync and async clients share: configuration, request bodies, error decoding and
event parsing — everything but the I/O."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import httpx
from httpx_sse import ServerSentEvent

from longdoc.errors import APIError, ConfigurationError
from schemas.api import JobEventOut

__version__ = "0.1.0"
USER_AGENT = f"longdoc-python/{__version__}"
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
LONG_POLL_S = 30.0  # one long-poll request; the server answers earlier on any change
RECONNECT_ATTEMPTS = 8  # consecutive failures before an event stream gives up

Source = str | os.PathLike[str]
Schema = Mapping[str, Any] | str | os.PathLike[str]
UploadProgress = Callable[[int, int], None]  # (bytes sent, bytes in all)
UploadHandler = Callable[[str, int, int], None]  # (file as named, bytes sent, bytes in all)


def resolve_config(base_url: str | None, api_key: str | None) -> tuple[str, str]:
    url = base_url or os.environ.get("LONGDOC_URL")
    key = api_key or os.environ.get("LONGDOC_API_KEY")
    if not url:
        raise ConfigurationError("no server: pass base_url or set LONGDOC_URL "
                                 "(e.g. http://127.0.0.1:8000)")
    if not key:
        raise ConfigurationError("no API key: pass api_key or set LONGDOC_API_KEY "
                                 "(`longdoc keys create --tenant NAME` makes one)")
    return url.rstrip("/"), key


def client_headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT}


def as_list(sources: Source | Sequence[Source]) -> list[Source]:
    return [sources] if isinstance(sources, str | os.PathLike) else list(sources)


def progress_of(name: str, handler: UploadHandler | None) -> UploadProgress | None:
    if handler is None:
        return None
    return lambda sent, total: handler(name, sent, total)


def is_url(source: Source) -> bool:
    return isinstance(source, str) and source.startswith(("http://", "https://"))


def load_schema(schema: Schema) -> dict[str, Any]:
    """A schema given as a mapping, a JSON text, or the path of a JSON file."""
    if isinstance(schema, Mapping):
        return dict(schema)
    if isinstance(schema, str) and schema.lstrip().startswith("{"):
        loaded = json.loads(schema)
    else:
        loaded = json.loads(Path(schema).read_text(encoding="utf-8"))
    if not isinstance(loaded, dict):
        raise ValueError("a JSON Schema is a JSON object")
    return loaded


def job_body(document_ids: Sequence[str], schema: Schema, options: Mapping[str, Any]
             ) -> dict[str, Any]:
    body = {"document_ids": list(document_ids), "schema": load_schema(schema)}
    body.update({k: v for k, v in options.items() if v is not None})
    return body


def pages_by_document(pages: str | Mapping[str, str] | None, sources: Sequence[Source],
                      document_ids: Sequence[str]) -> dict[str, str] | None:
    """``pages`` for every document (a string) or per source as the caller named it, turned
    into the API's ``{document id: ranges}``."""
    if pages is None:
        return None
    if isinstance(pages, str):
        return dict.fromkeys(document_ids, pages)
    by_source = {os.fspath(s): d for s, d in zip(sources, document_ids, strict=True)}
    unknown = [s for s in pages if s not in by_source and s not in document_ids]
    if unknown:
        raise ValueError(f"pages names documents that are not being extracted: {unknown}")
    return {by_source.get(s, s): ranges for s, ranges in pages.items()}


def check(response: httpx.Response) -> httpx.Response:
    """The response, or the API's error raised with its code and status."""
    if response.status_code < 400:
        return response
    code, message = f"http_{response.status_code}", response.reason_phrase
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        pass
    retry = response.headers.get("retry-after")
    raise APIError(code, message, response.status_code,
                   float(retry) if retry and retry.replace(".", "", 1).isdigit() else None)


def parse_event(sse: ServerSentEvent) -> JobEventOut | None:
    if not sse.data:
        return None  # the stream's "retry:" field, or a comment
    return JobEventOut.model_validate_json(sse.data)


def long_poll_timeout(wait: float) -> httpx.Timeout:
    return httpx.Timeout(DEFAULT_TIMEOUT.connect, read=wait + 30.0)


def reconnect_delay(failures: int) -> float:
    return min(0.25 * 2.0 ** failures, 5.0)


class CountingReader:
    """A file whose reads report the bytes sent so far: the upload's progress."""

    def __init__(self, file: IO[bytes], on_progress: UploadProgress) -> None:
        self.file, self.on_progress = file, on_progress
        self.total = os.fstat(file.fileno()).st_size
        self.sent = 0

    def read(self, size: int = -1) -> bytes:
        data = self.file.read(size)
        self.sent += len(data)
        self.on_progress(self.sent, self.total)
        return data

    def fileno(self) -> int:
        return self.file.fileno()

    def seek(self, offset: int, whence: int = 0) -> int:
        position = self.file.seek(offset, whence)
        if whence == 0 and offset == 0:
            self.sent = 0
        return position

    def tell(self) -> int:
        return self.file.tell()
