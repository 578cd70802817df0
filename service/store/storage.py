"""Content-addressed blob storage behind a small interface (local disk now, S3 later)."""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path
from typing import BinaryIO, Protocol

from service.core.settings import Settings


class BlobWriter(Protocol):
    size: int

    def write(self, chunk: bytes) -> None: ...

    def commit(self) -> str: ...

    def abort(self) -> None: ...


class BlobStore(Protocol):
    def writer(self) -> BlobWriter: ...

    def put_bytes(self, data: bytes) -> str: ...

    def open(self, key: str) -> BinaryIO: ...

    def exists(self, key: str) -> bool: ...


class LocalBlobWriter:
    """Streams a blob to a temporary file while hashing it; ``commit`` files it under its hash."""

    def __init__(self, storage: LocalStorage) -> None:
        self.storage = storage
        self.tmp = storage.root / "tmp" / secrets.token_hex(16)
        self.file: BinaryIO | None = open(self.tmp, "wb")  # noqa: SIM115 - closed by commit/abort
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        assert self.file is not None
        self.digest.update(chunk)
        self.file.write(chunk)
        self.size += len(chunk)

    def commit(self) -> str:
        assert self.file is not None
        self.file.close()
        self.file = None
        key = self.digest.hexdigest()
        final = self.storage.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
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
        (root / "tmp").mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / key[2:4] / key

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def open(self, key: str) -> BinaryIO:
        return open(self.path(key), "rb")

    def writer(self) -> LocalBlobWriter:
        return LocalBlobWriter(self)

    def put_bytes(self, data: bytes) -> str:
        key = hashlib.sha256(data).hexdigest()
        if not self.exists(key):
            writer = self.writer()
            writer.write(data)
            writer.commit()
        return key


def open_storage(settings: Settings) -> LocalStorage:
    return LocalStorage(settings.storage_root)
