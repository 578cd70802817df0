"""Which stored files are referenced, and the sweep that removes the others.

A document refers to its upload (``documents.sha256``) and to the files ingestion made for it
(``document_blobs``: the pages artifact and page images). A file nothing refers to, and that
has not been written for the grace period, is removed: the debris of a crash between storing a
file and committing its row, or of a parse that died half way.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.logs import log
from service.store.db import Database
from service.store.models import Document, DocumentBlob
from service.store.storage import BlobStore

BATCH = 500


def record_blobs(session: Session, document_id: str, keys: Iterable[str]) -> None:
    known = set(session.scalars(select(DocumentBlob.key).where(
        DocumentBlob.document_id == document_id)))
    for key in set(keys) - known:
        session.add(DocumentBlob(document_id=document_id, key=key))


def referenced(session: Session, keys: list[str]) -> set[str]:
    uploads = session.scalars(select(Document.sha256).where(Document.sha256.in_(keys)))
    owned = session.scalars(select(DocumentBlob.key).where(DocumentBlob.key.in_(keys)))
    return set(uploads) | set(owned)


def _batches(keys: Iterator[str]) -> Iterator[list[str]]:
    while batch := list(islice(keys, BATCH)):
        yield batch


def collect_unreferenced(db: Database, storage: BlobStore, grace_s: float) -> int:
    """Removes stored files no row refers to; short read transactions, one batch at a time."""
    removed = storage.delete_stale_temporary(grace_s)
    for batch in _batches(storage.keys_older_than(grace_s)):
        with db.session(readonly=True) as session:
            keep = referenced(session, batch)
        for key in batch:
            if key not in keep and storage.delete_if_older(key, grace_s):
                removed += 1
    if removed:
        log.info("blobs.collected", removed=removed)
    return removed
