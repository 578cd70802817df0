"""Uploads by URL: the service fetches the file with the guard webhooks use.

The URL is parsed strictly and its host judged before anything connects (a refused target gets
422 with no connection made); every connection is checked again at connect time; redirects are
followed by hand, each hop judged the same way; the size cap acts while the body streams; the
whole fetch has a deadline.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urljoin

import httpcore

from schemas.errors import ErrorCode, LongdocError
from service.api.uploads import UploadedFile
from service.core.outbound import AsyncGuardedBackend, Target, TargetRefused, parse_url, resolve_checked
from service.store.storage import BlobStore

MAX_REDIRECTS = 5


def _judge(url: str, allowed: list[str]) -> Target:
    target = parse_url(url, "url", ErrorCode.INVALID_URL)
    try:
        resolve_checked(target.host, target.port, allowed)
    except TargetRefused as exc:
        raise LongdocError(ErrorCode.URL_NOT_ALLOWED, exc.message.replace(
            "LONGDOC_WEBHOOK_ALLOWED_NETWORKS", "LONGDOC_URL_ALLOWED_NETWORKS")) from None
    return target


async def fetch_url(url: str, storage: BlobStore, max_bytes: int, allowed: list[str],
                    timeout_s: float) -> tuple[Target, UploadedFile]:
    """The first target and the fetched file (temporary until committed)."""
    first = await asyncio.to_thread(_judge, url, allowed)
    try:
        return first, await asyncio.wait_for(
            _download(first, storage, max_bytes, allowed, timeout_s), timeout_s)
    except TimeoutError:
        raise LongdocError(ErrorCode.URL_FETCH_FAILED,
                           f"the file did not arrive within {timeout_s:.0f} s") from None


async def _download(target: Target, storage: BlobStore, max_bytes: int, allowed: list[str],
                    timeout_s: float) -> UploadedFile:
    timeouts = {"connect": timeout_s, "read": timeout_s, "write": timeout_s, "pool": timeout_s}
    headers = [(b"user-agent", b"longdoc-fetch/1"), (b"accept", b"*/*")]
    async with httpcore.AsyncConnectionPool(network_backend=AsyncGuardedBackend(allowed)) as pool:
        for _ in range(MAX_REDIRECTS + 1):
            try:
                async with pool.stream("GET", target.url, headers=headers,
                                       extensions={"timeout": timeouts}) as response:
                    location = _header(response, b"location")
                    if response.status in (301, 302, 303, 307, 308) and location:
                        target = await asyncio.to_thread(
                            _judge, urljoin(target.url, location.decode("latin-1")), allowed)
                        continue
                    if not 200 <= response.status < 300:
                        raise LongdocError(ErrorCode.URL_FETCH_FAILED,
                                           f"the server answered {response.status}")
                    return await _store(response, storage, max_bytes)
            except TargetRefused as exc:
                raise LongdocError(ErrorCode.URL_NOT_ALLOWED, exc.message) from None
            except LongdocError:
                raise
            except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError,
                    httpcore.UnsupportedProtocol, OSError) as exc:
                raise LongdocError(ErrorCode.URL_FETCH_FAILED,
                                   f"the file could not be fetched ({type(exc).__name__})") from None
            except Exception as exc:  # noqa: BLE001 - whatever a stranger's server makes of us
                raise LongdocError(ErrorCode.URL_FETCH_FAILED,
                                   f"the file could not be fetched ({type(exc).__name__})") from None
    raise LongdocError(ErrorCode.URL_FETCH_FAILED, f"more than {MAX_REDIRECTS} redirects")


def _header(response: Any, name: bytes) -> bytes | None:
    for key, value in response.headers:
        if key.lower() == name:
            return bytes(value)
    return None


async def _store(response: Any, storage: BlobStore, max_bytes: int) -> UploadedFile:
    declared = _header(response, b"content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise LongdocError(ErrorCode.FILE_TOO_LARGE,
                           f"the file is larger than the limit of {max_bytes} bytes")
    writer, head = storage.writer(), b""
    try:
        async for chunk in response.aiter_stream():
            if writer.size + len(chunk) > max_bytes:
                raise LongdocError(ErrorCode.FILE_TOO_LARGE,
                                   f"the file is larger than the limit of {max_bytes} bytes")
            if len(head) < 64:
                head += chunk[: 64 - len(head)]
            writer.write(chunk)
            if writer.pending:  # a full part for S3: sent off the event loop
                await asyncio.to_thread(writer.flush)
    except BaseException:
        writer.abort()
        raise
    return UploadedFile(writer, writer.size, head, None)
