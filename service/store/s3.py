"""Blobs in an S3 bucket (AWS S3 or any S3-compatible store) with the guarantees of the local
directory: nothing is filed under its hash before ``commit``, identical content is stored once,
and a stored-again blob is safe from the collector for the grace period.

Layout under the prefix (``LONGDOC_STORAGE_URL=s3://bucket/prefix``)::

    ab/cd/<sha256>    a blob, as on disk
    tmp/<t>-<random>  an upload in progress, started at Unix time <t>: a multipart upload, or
                      its completed object for the moment between completing it and copying it
                      under its hash
    touched/<sha256>  an empty marker written when a blob is stored again: its LastModified is
                      the blob's "last written" for the collector (S3 cannot touch an object;
                      copying it onto itself would rewrite every byte, and on a versioned bucket
                      keep a full copy per repeat upload)

Uploads stream as multipart uploads of ``PART_SIZE`` parts, so an upload holds at most two
parts in memory; a file smaller than one part is sent in one PutObject at commit, without a
temporary object. Parsers read through ``S3RangeReader``: ranged GETs of ``BLOCK_SIZE`` blocks,
a few of them cached, instead of the whole object in memory or on local disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar, cast

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from service.core.settings import S3Location
from service.store.storage import Source, StorageUnavailable, check_key, is_key

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import (
        CompletedPartTypeDef,
        CopySourceTypeDef,
        MultipartUploadTypeDef,
    )

T = TypeVar("T")
_STARTED = re.compile(r"([0-9]{1,12})-", re.ASCII)  # tmp/<unix time>-<random>

MiB = 1024 * 1024
PART_SIZE = 8 * MiB  # S3's minimum is 5 MiB for every part but the last
BLOCK_SIZE = 1 * MiB  # one ranged GET of a parser's reads (measured: docs/benchmarks.md)
CACHED_BLOCKS = 16
COPY_OBJECT_LIMIT = 5 * 1024 * MiB  # CopyObject's limit; larger objects are copied in parts
MISSING = ("404", "NoSuchKey", "NotFound")


def _reason(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', '?')}: {error.get('Message', '')}".rstrip(": ")
    return type(exc).__name__


def _missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in MISSING


class S3Storage:
    """Blobs at ``s3://bucket/prefix/ab/cd/<sha256>``; identical content is stored once."""

    def __init__(self, location: S3Location, endpoint_url: str | None, max_connections: int = 10) -> None:
        # The EC2 metadata address is asked for credentials only when an operator says so
        # (AWS_EC2_METADATA_DISABLED=false on an instance with a role): elsewhere the lookup
        # would wait for its timeouts at every start before failing.
        os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
        self.bucket, self.prefix = location.bucket, location.prefix
        self.base = f"{location.prefix}/" if location.prefix else ""
        self.endpoint_url = endpoint_url
        self.config = Config(
            # S3-compatible stores answer on one host name (path-style); AWS S3 itself prefers
            # virtual-hosted names, botocore's default.
            s3={"addressing_style": "path"} if endpoint_url else {},
            region_name=os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
            retries={"mode": "standard", "max_attempts": 4},
            connect_timeout=5, read_timeout=60, max_pool_connections=max_connections)
        self._session = boto3.session.Session()
        self._lock = threading.Lock()
        self._client: S3Client | None = None
        self._pid = os.getpid()

    @property
    def client(self) -> S3Client:
        """One client per process: boto3 clients are thread-safe, not fork-safe (a forked
        parser would share the parent's pooled sockets), so a forked child makes its own from
        the inherited session, whose loaded service model makes that quick."""
        if self._pid != os.getpid():
            self._lock, self._client, self._pid = threading.Lock(), None, os.getpid()
        client = self._client
        if client is None:
            with self._lock:  # sessions are not thread-safe: one thread makes the client
                if self._client is None:
                    self._client = self._session.client("s3", endpoint_url=self.endpoint_url,
                                                        config=self.config)
                client = self._client
        return client

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (BotoCoreError, ClientError) as exc:
            raise StorageUnavailable(f"S3 {what} on bucket {self.bucket!r} failed: "
                                     f"{_reason(exc)}") from exc

    def blob_key(self, key: str) -> str:
        check_key(key)
        return f"{self.base}{key[:2]}/{key[2:4]}/{key}"

    def _marker_key(self, key: str) -> str:
        return f"{self.base}touched/{key}"

    def _stat(self, object_key: str) -> tuple[int, float] | None:
        """Size and last-modified time (epoch seconds) of an object, None when it is absent."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=object_key)
        except ClientError as exc:
            if _missing(exc):
                return None
            raise StorageUnavailable(f"S3 HeadObject failed: {_reason(exc)}") from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(f"S3 HeadObject failed: {_reason(exc)}") from exc
        return head["ContentLength"], head["LastModified"].timestamp()

    def _put(self, object_key: str, data: bytes) -> None:
        self._call("PutObject", lambda: self.client.put_object(
            Bucket=self.bucket, Key=object_key, Body=data))

    def _delete(self, object_key: str) -> None:
        self._call("DeleteObject", lambda: self.client.delete_object(
            Bucket=self.bucket, Key=object_key))

    def touch_if_stored(self, key: str) -> bool:
        """True when the blob is already stored, after marking it as stored again now."""
        if self._stat(self.blob_key(key)) is None:
            return False
        self._put(self._marker_key(key), b"")
        # Looked at again after the marker: a collector that judged the blob old before the
        # marker existed may have removed it in between, and then it is stored anew.
        return self._stat(self.blob_key(key)) is not None

    def store(self, key: str, data: bytes) -> None:
        if not self.touch_if_stored(key):
            self._put(self.blob_key(key), data)

    # ------------------------------------------------------------ BlobStore

    def writer(self) -> S3BlobWriter:
        return S3BlobWriter(self)

    def put_bytes(self, data: bytes) -> str:
        key = hashlib.sha256(data).hexdigest()
        self.store(key, data)
        return key

    def open(self, key: str) -> BinaryIO:
        """The whole blob as one streamed GET (pages artifacts, page images)."""
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.blob_key(key))["Body"]
        except ClientError as exc:
            if _missing(exc):
                raise FileNotFoundError(key) from None
            raise StorageUnavailable(f"S3 GetObject failed: {_reason(exc)}") from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(f"S3 GetObject failed: {_reason(exc)}") from exc
        # botocore's StreamingBody is an IOBase with read, readinto and close: what callers use.
        return cast(BinaryIO, body)

    def source(self, key: str) -> Source:
        """A seekable reader over ranged GETs. The HEAD happens here, in the worker, so an
        unreachable store fails the task (which retries) rather than the forked parse (which
        would call the file unreadable)."""
        object_key = self.blob_key(key)
        stat = self._stat(object_key)
        if stat is None:
            raise FileNotFoundError(key)
        return io.BufferedReader(S3RangeReader(self, object_key, stat[0]), buffer_size=64 * 1024)

    def get_range(self, object_key: str, first: int, last: int) -> bytes:
        def get() -> bytes:
            response = self.client.get_object(Bucket=self.bucket, Key=object_key,
                                              Range=f"bytes={first}-{last}")
            return response["Body"].read()

        return self._call("GetObject", get)

    def exists(self, key: str) -> bool:
        return self._stat(self.blob_key(key)) is not None

    def delete(self, key: str) -> None:
        self._delete(self.blob_key(key))
        self._delete(self._marker_key(key))

    def delete_if_older(self, key: str, seconds: float) -> bool:
        """Deletes the blob unless it was written, or stored again, in the last ``seconds``."""
        stat = self._stat(self.blob_key(key))
        if stat is None:
            return False
        marker = self._stat(self._marker_key(key))
        written = max(stat[1], marker[1] if marker else 0.0)
        if written >= time.time() - seconds:
            return False
        self.delete(key)
        return True

    def _listed(self, prefix: str) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                yield from cast(list[dict[str, Any]], page.get("Contents", []))
        except (BotoCoreError, ClientError) as exc:
            raise StorageUnavailable(f"S3 ListObjectsV2 failed: {_reason(exc)}") from exc

    def keys_older_than(self, seconds: float) -> Iterator[str]:
        """Stored keys last written more than ``seconds`` ago, by ListObjectsV2's LastModified
        (``delete_if_older`` also reads the blob's marker before it deletes anything)."""
        cutoff = time.time() - seconds
        for obj in self._listed(self.base):
            parts = obj["Key"][len(self.base):].split("/")
            if (len(parts) == 3 and is_key(parts[2]) and parts[0] == parts[2][:2]
                    and parts[1] == parts[2][2:4] and obj["LastModified"].timestamp() < cutoff):
                yield parts[2]

    def delete_stale_temporary(self, seconds: float) -> int:
        """Uploads that never finished (a killed API process): their multipart uploads are
        aborted, their temporary objects removed; markers past the grace period have done
        their work and go too."""
        cutoff, removed = time.time() - seconds, 0
        for obj in list(self._listed(f"{self.base}tmp/")):
            if obj["LastModified"].timestamp() < cutoff:
                self._delete(obj["Key"])
                removed += 1
        paginator = self.client.get_paginator("list_multipart_uploads")
        try:
            started_long_ago = [
                (u["Key"], u["UploadId"])
                for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{self.base}tmp/")
                for u in page.get("Uploads", []) if _started(u) < cutoff]
        except (BotoCoreError, ClientError) as exc:
            raise StorageUnavailable(f"S3 ListMultipartUploads failed: {_reason(exc)}") from exc
        for object_key, upload_id in started_long_ago:
            # A slow upload may still be sending parts: only one idle for the grace period goes.
            if self._last_part_time(object_key, upload_id) < cutoff:
                self._abort(object_key, upload_id)
                removed += 1
        for obj in list(self._listed(f"{self.base}touched/")):
            if obj["LastModified"].timestamp() < cutoff:
                self._delete(obj["Key"])
        return removed

    def _last_part_time(self, object_key: str, upload_id: str) -> float:
        paginator = self.client.get_paginator("list_parts")
        try:
            parts = [part for page in paginator.paginate(Bucket=self.bucket, Key=object_key,
                                                         UploadId=upload_id)
                     for part in page.get("Parts", [])]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchUpload":
                return time.time()  # finished meanwhile: nothing to abort
            raise StorageUnavailable(f"S3 ListParts failed: {_reason(exc)}") from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(f"S3 ListParts failed: {_reason(exc)}") from exc
        return max((p["LastModified"].timestamp() for p in parts), default=0.0)

    def _abort(self, object_key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=object_key, UploadId=upload_id)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                raise StorageUnavailable(f"S3 AbortMultipartUpload failed: {_reason(exc)}") from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(f"S3 AbortMultipartUpload failed: {_reason(exc)}") from exc

    def check(self) -> None:
        self._call("HeadBucket", lambda: self.client.head_bucket(Bucket=self.bucket))


def _started(upload: MultipartUploadTypeDef) -> float:
    """When a multipart upload began: the later of the store's ``Initiated`` and the time its
    key was named with. Some S3-compatible stores report a fixed ``Initiated`` (moto: 2010),
    which would make every upload look abandoned before its first part has arrived."""
    initiated = upload["Initiated"].timestamp() if "Initiated" in upload else 0.0
    named = _STARTED.match(upload.get("Key", "").rsplit("/", 1)[-1])
    # Never later than now: a key from a host whose clock runs ahead is still collected.
    return max(initiated, min(float(named[1]), time.time()) if named else 0.0)


class S3BlobWriter:
    """Streams a blob into a multipart upload under ``tmp/`` while hashing it; ``commit`` files
    it under its hash (or only marks the stored copy, when the content is known)."""

    def __init__(self, storage: S3Storage) -> None:
        self.storage = storage
        self.digest = hashlib.sha256()
        self.size = 0
        self.temp_key = ""  # named when the multipart upload begins, with that time
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[CompletedPartTypeDef] = []

    @property
    def pending(self) -> bool:
        return len(self._buffer) >= PART_SIZE

    def hexdigest(self) -> str:
        """The SHA-256 of what was written so far (the key it will be filed under)."""
        return self.digest.hexdigest()

    def write(self, chunk: bytes) -> None:
        self.digest.update(chunk)
        self.size += len(chunk)
        self._buffer += chunk
        if len(self._buffer) >= 2 * PART_SIZE:
            self.flush()  # a caller that never flushes still holds at most two parts

    def flush(self) -> None:
        if len(self._buffer) >= PART_SIZE:
            part, self._buffer = self._buffer, bytearray()
            self._send_part(bytes(part))

    def _send_part(self, data: bytes) -> None:
        s = self.storage
        if self._upload_id is None:
            self.temp_key = f"{s.base}tmp/{int(time.time())}-{secrets.token_hex(16)}"
            self._upload_id = s._call("CreateMultipartUpload", lambda: s.client.create_multipart_upload(
                Bucket=s.bucket, Key=self.temp_key)["UploadId"])
        upload_id, number = self._upload_id, len(self._parts) + 1
        etag = s._call("UploadPart", lambda: s.client.upload_part(
            Bucket=s.bucket, Key=self.temp_key, UploadId=upload_id, PartNumber=number,
            Body=data)["ETag"])
        self._parts.append({"PartNumber": number, "ETag": etag})

    def commit(self) -> str:
        key = self.digest.hexdigest()
        s = self.storage
        if self._upload_id is None:
            s.store(key, bytes(self._buffer))  # under one part: one PutObject, nothing temporary
        elif s.touch_if_stored(key):
            self.abort()
        else:
            if self._buffer:
                self._send_part(bytes(self._buffer))
            upload_id = self._upload_id
            s._call("CompleteMultipartUpload", lambda: s.client.complete_multipart_upload(
                Bucket=s.bucket, Key=self.temp_key, UploadId=upload_id,
                MultipartUpload={"Parts": self._parts}))
            self._upload_id = None  # completed: nothing left to abort
            source: CopySourceTypeDef = {"Bucket": s.bucket, "Key": self.temp_key}
            if self.size <= COPY_OBJECT_LIMIT:
                s._call("CopyObject", lambda: s.client.copy_object(
                    CopySource=source, Bucket=s.bucket, Key=s.blob_key(key)))
            else:
                s._call("copy", lambda: s.client.copy(source, s.bucket, s.blob_key(key)))
            s._delete(self.temp_key)
        self._buffer = bytearray()
        return key

    def abort(self) -> None:
        """Best effort: an upload the store could not abort now is aborted by the collector
        once it is older than the grace period."""
        self._buffer = bytearray()
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is not None:
            with contextlib.suppress(StorageUnavailable):
                self.storage._abort(self.temp_key, upload_id)


class S3RangeReader(io.RawIOBase):
    """A seekable, read-only view of an object through ranged GETs of ``BLOCK_SIZE`` blocks,
    the last ``CACHED_BLOCKS`` of them kept: PDFium, pypdf and Pillow read a large upload
    while holding at most 16 MiB of it."""

    def __init__(self, storage: S3Storage, object_key: str, size: int) -> None:
        super().__init__()
        self.storage, self.object_key, self.size = storage, object_key, size
        self.position = 0
        self.gets = 0
        self._blocks: OrderedDict[int, bytes] = OrderedDict()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self.position = base + offset
        return self.position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        wanted = max(0, min(len(view), self.size - self.position))
        done = 0
        while done < wanted:
            index, offset = divmod(self.position + done, BLOCK_SIZE)
            block = self._block(index)
            take = min(wanted - done, len(block) - offset)
            if take <= 0:
                break  # the object is shorter than its HEAD said
            view[done:done + take] = block[offset:offset + take]
            done += take
        self.position += done
        return done

    def _block(self, index: int) -> bytes:
        block = self._blocks.get(index)
        if block is not None:
            self._blocks.move_to_end(index)
            return block
        first = index * BLOCK_SIZE
        block = self.storage.get_range(self.object_key, first, min(self.size, first + BLOCK_SIZE) - 1)
        self.gets += 1
        self._blocks[index] = block
        if len(self._blocks) > CACHED_BLOCKS:
            self._blocks.popitem(last=False)
        return block
