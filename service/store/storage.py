"""Content-addressed blob storage behind one interface: a local directory (the default) or an
S3 bucket (``service.store.s3``); ``open_storage(settings)`` picks one.

A blob is written to a temporary file (or multipart upload) while it streams in, and filed under
its SHA-256 only when its row is about to be committed (``commit``): a refused upload leaves
nothing behind. Identical content is stored once. Local files are private to the service's user
(0600 in a 0700 tree).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from service.core.settings import Settings

KEY_LENGTH = 64  # hex SHA-256
HEX = frozenset("0123456789abcdef")

# What a parser opens: a path on this machine's disk, or a seekable file over the network.
Source = str | BinaryIO


class StorageUnavailable(Exception):
    """The blob store did not answer or refused the service's credentials: a reason to retry
    later (the API answers 503), never a verdict on the file."""


def is_key(name: str) -> bool:
    return len(name) == KEY_LENGTH and set(name) <= HEX


def check_key(key: str) -> str:
    if not is_key(key):
        raise ValueError("not a blob key")
    return key


class BlobWriter(Protocol):
    size: int

    @property
    def pending(self) -> bool:
        """A part is ready to send: async callers run ``flush`` in a thread then, so the event
        loop never waits on the network."""
        ...

    def write(self, chunk: bytes) -> None: ...

    def hexdigest(self) -> str: ...
    def flush(self) -> None: ...

    def commit(self) -> str: ...

    def abort(self) -> None: ...


class BlobStore(Protocol):
    def writer(self) -> BlobWriter: ...

    def put_bytes(self, data: bytes) -> str: ...

    def open(self, key: str) -> BinaryIO: ...

    def source(self, key: str) -> Source: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def delete_if_older(self, key: str, seconds: float) -> bool: ...

    def keys_older_than(self, seconds: float) -> Iterator[str]: ...

    def delete_stale_temporary(self, seconds: float) -> int: ...

    def check(self) -> None: ...


class LocalBlobWriter:
    """Streams a blob to a temporary file while hashing it; ``commit`` files it under its hash."""

    def __init__(self, storage: LocalStorage) -> None:
        self.storage = storage
        self.tmp = storage.root / "tmp" / secrets.token_hex(16)
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self.file: BinaryIO | None = os.fdopen(fd, "wb")
        self.digest = hashlib.sha256()
        self.size = 0

    pending = False  # every write goes straight to the file

    def write(self, chunk: bytes) -> None:
        assert self.file is not None
        self.digest.update(chunk)
        self.file.write(chunk)
        self.size += len(chunk)

    def hexdigest(self) -> str:
        """The SHA-256 of what was written so far (the key it will be filed under)."""
        return self.digest.hexdigest()
    def flush(self) -> None:
        pass

    def commit(self) -> str:
        assert self.file is not None
        self.file.close()
        self.file = None
        key = self.digest.hexdigest()
        final = self.storage.path(key)
        if final.exists():
            self.tmp.unlink(missing_ok=True)  # stored before: one copy is enough
            os.utime(final)  # a fresh reference: not collected during the grace period
            return key
        final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.replace(self.tmp, final)
        return key

    def abort(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        self.tmp.unlink(missing_ok=True)


class LocalStorage:
    """Blobs live at ``root/ab/cd/<sha256>``; identical content is stored once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "tmp").mkdir(parents=True, exist_ok=True, mode=0o700)

    def path(self, key: str) -> Path:
        check_key(key)
        return self.root / key[:2] / key[2:4] / key

    def source(self, key: str) -> Source:
        return str(self.path(key))

    def check(self) -> None:
        if not os.access(self.root / "tmp", os.W_OK | os.X_OK):
            raise StorageUnavailable(f"{self.root} is not writable")

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def open(self, key: str) -> BinaryIO:
        return open(self.path(key), "rb")

    def writer(self) -> LocalBlobWriter:
        return LocalBlobWriter(self)

    def put_bytes(self, data: bytes) -> str:
        writer = self.writer()
        try:
            writer.write(data)
            return writer.commit()
        except BaseException:
            writer.abort()
            raise

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def delete_if_older(self, key: str, seconds: float) -> bool:
        """Deletes the blob unless it was written (or stored again) in the last ``seconds``: an
        upload of the same content touches it just before its row commits."""
        path = self.path(key)
        try:
            if path.stat().st_mtime >= time.time() - seconds:
                return False
            path.unlink()
            return True
        except FileNotFoundError:
            return False

    def keys_older_than(self, seconds: float) -> Iterator[str]:
        """Stored keys last written more than ``seconds`` ago (and stale temporary files'
        names, which ``delete_temporary`` removes)."""
        cutoff = time.time() - seconds
        for top in sorted(self.root.iterdir()):
            if len(top.name) != 2 or not top.is_dir():
                continue
            for path in top.glob("*/*"):
                try:
                    if len(path.name) == KEY_LENGTH and path.stat().st_mtime < cutoff:
                        yield path.name
                except FileNotFoundError:
                    continue

    def delete_stale_temporary(self, seconds: float) -> int:
        """Temporary files of uploads that never finished (a killed process)."""
        cutoff, removed = time.time() - seconds, 0
        for path in (self.root / "tmp").iterdir():
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed


def open_storage(settings: Settings) -> BlobStore:
    """The one storage object of a process; boto3 is imported only when files live in S3."""
    location = settings.storage_location
    if isinstance(location, Path):
        return LocalStorage(location)
    from service.store.s3 import S3Storage

    return S3Storage(location, settings.s3_endpoint_url or None,
                     max_connections=max(10, settings.model_concurrency))
