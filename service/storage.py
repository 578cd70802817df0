"""Content-addressed blob storage behind a small interface (local disk now, S3 later)."""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO, Protocol


class UploadTooLarge(Exception):
    pass


class Storage(Protocol):
    async def put_stream(
        self, chunks: AsyncIterator[bytes], max_bytes: int
    ) -> tuple[str, int, bytes]: ...

    def put_bytes(self, data: bytes) -> str: ...

    def open(self, key: str) -> BinaryIO: ...

    def path(self, key: str) -> Path: ...

    def exists(self, key: str) -> bool: ...


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

    def _commit(self, tmp: Path, key: str) -> None:
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)

    async def put_stream(
        self, chunks: AsyncIterator[bytes], max_bytes: int
    ) -> tuple[str, int, bytes]:
        """Writes chunks to disk while hashing; stops as soon as ``max_bytes`` is passed.

        Returns (sha256, size, first bytes) - the head is kept for magic-byte sniffing.
        """
        digest = hashlib.sha256()
        size = 0
        head = b""
        tmp = self.root / "tmp" / secrets.token_hex(16)
        try:
            with open(tmp, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise UploadTooLarge(size)
                    if len(head) < 64:
                        head += chunk[: 64 - len(head)]
                    digest.update(chunk)
                    out.write(chunk)
            key = digest.hexdigest()
            self._commit(tmp, key)
            return key, size, head
        finally:
            tmp.unlink(missing_ok=True)

    def put_bytes(self, data: bytes) -> str:
        key = hashlib.sha256(data).hexdigest()
        if not self.exists(key):
            tmp = self.root / "tmp" / secrets.token_hex(16)
            tmp.write_bytes(data)
            self._commit(tmp, key)
        return key


def get_storage(root: Path | None = None) -> LocalStorage:
    from service.settings import get_settings

    return LocalStorage(root or get_settings().storage_root)
