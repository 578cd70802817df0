"""Deleting a tenant's data, on request or when its retention ends.

A job is deleted with everything that belongs to it: result, chunks and their answers, model
calls, events, webhook deliveries and their attempts, idempotency records. A document is
deleted with its rows (the files ingestion made, its place in ended jobs) and then its stored
files, each unless another row still refers to it (identical content is stored once). An ended
job keeps its ``document_ids``, so its view and result stay whole when a document goes.

Nothing is deleted under a worker's feet: a document is not deleted while it is being ingested
or while a queued or running job reads it, and a job not while a call, its planning or its
merge is in flight (a canceled job's calls still return, and are counted). Once a job has ended
and nothing of it is in flight its use goes into the tenant's ledger
(``service.store.quotas.charge``) and its purge time is set: the end plus its
``retention_seconds`` (at most ``LONGDOC_RETENTION_SECONDS``). A document's purge time is its
upload plus ``LONGDOC_RETENTION_SECONDS``, or the end of a ``delete_documents`` job that read
it. Lowering ``LONGDOC_RETENTION_SECONDS`` applies to rows
stored before as well (the purge also compares upload and end times with it).

The purge runs from beat in batches of about ``ROWS`` rows, each a short transaction over
indexed columns (a large job's chunks, calls and events go in slices first); files are removed
after the transaction that deleted their last row has committed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, delete, exists, or_, select, text, update
from sqlalchemy.orm import Session

from schemas.api import JobStatus
from service.core.logs import log
from service.core.settings import Settings
from service.store.blobs import referenced
from service.store.db import Database
from service.store.models import (
    CallStatus,
    Chunk,
    ChunkStatus,
    Document,
    DocumentBlob,
    DocumentStatus,
    IdempotencyKey,
    Job,
    JobDocument,
    JobEvent,
    ModelCall,
    Result,
    WebhookAttempt,
    WebhookDelivery,
    utcnow,
)
from service.store.quotas import charge
from service.store.storage import BlobStore

BATCH = 100  # jobs or documents looked at per purge step
# Rows deleted per transaction, about: a few tens of milliseconds of write lock on SQLite.
ROWS = 2000
ENDED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)
UNFINISHED = (JobStatus.QUEUED, JobStatus.RUNNING)
_LOCK = 0x70757267  # "purg": charging is serialised on PostgreSQL (SQLite serialises writers)


def serialize(session: Session) -> None:
    """One writer of the ledger at a time: the purge and deletes charge jobs in any order."""
    if session.connection().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK})


def _idle(now: datetime, in_flight_s: float) -> list[ColumnElement[bool]]:
    """Nothing of the job in flight: no claim on the job (planning, a merge), no chunk whose
    call a live worker may still be waiting for, and no call still out (a worker presumed dead
    may close a chunk with its late answer while the worker it was sent again to waits for
    its own: that call is counted when it returns)."""
    busy_chunk = exists().where(Chunk.job_id == Job.id, Chunk.status == ChunkStatus.RUNNING,
                                Chunk.lease_until >= now)
    call_out = exists().where(ModelCall.job_id == Job.id, ModelCall.status == CallStatus.SENT,
                              ModelCall.created_at >= now - timedelta(seconds=in_flight_s))
    return [or_(Job.lease_until.is_(None), Job.lease_until < now), ~busy_chunk, ~call_out]


def job_idle(session: Session, settings: Settings, job_id: str, now: datetime) -> bool:
    return session.scalar(select(Job.id).where(
        Job.id == job_id, *_idle(now, settings.call_in_flight_s))) is not None


def job_rows(chunks_total: int | None) -> int:
    """About how many rows deleting a job removes: a chunk, its call and its progress event,
    and a few of the job's own (status events, result, delivery)."""
    return 3 * (chunks_total or 0) + 8


def trim_job(db: Database, job_id: str) -> None:
    """A large job's events, calls and chunks, ``ROWS`` at a time, each slice its own short
    transaction; the job itself and the rest go with ``delete_job_rows``."""
    for model, key in ((JobEvent, JobEvent.id), (ModelCall, ModelCall.id), (Chunk, Chunk.id)):
        while True:
            with db.unit_of_work() as uow:
                ids = list(uow.session.scalars(select(key).where(model.job_id == job_id)
                                               .limit(ROWS)))
                if ids:
                    uow.session.execute(delete(model).where(key.in_(ids))
                                        .execution_options(synchronize_session=False))
            if len(ids) < ROWS:
                break


def retention_of(settings: Settings, job: Job) -> float:
    asked = (job.options or {}).get("retention_seconds")
    return min(float(asked), settings.retention_seconds) if asked is not None \
        else settings.retention_seconds


def settle(session: Session, settings: Settings, job: Job, now: datetime) -> None:
    """An ended job with nothing in flight: its use goes into the ledger, its purge time is set,
    and the documents of a ``delete_documents`` job are due now. Once: a job the purge has
    settled may be deleted later, and a job charged twice would count twice in its quotas."""
    if job.charged_at is None:
        charge(session, job, now)
    due = (job.finished_at or now) + timedelta(seconds=retention_of(settings, job))
    job.purge_at = min(due, job.purge_at) if job.purge_at else due
    if (job.options or {}).get("delete_documents"):
        mark_documents_due(session, job.id, now)


def mark_documents_due(session: Session, job_id: str, now: datetime) -> None:
    """``delete_documents``: the job's documents are deleted by the next purge, once no
    unfinished job reads them."""
    reading = select(JobDocument.document_id).where(JobDocument.job_id == job_id)
    session.execute(update(Document).where(
        Document.id.in_(reading), or_(Document.purge_at.is_(None), Document.purge_at > now))
        .values(purge_at=now))


def _idempotency_records(session: Session, endpoint: str, tenant_id: str,
                         ids: Sequence[str]) -> None:
    """The stored responses that created these rows (they repeat the rows' fields)."""
    session.execute(delete(IdempotencyKey).where(
        IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.endpoint == endpoint,
        IdempotencyKey.response["body"]["id"].as_string().in_(list(ids))))


def delete_job_rows(session: Session, jobs: Sequence[Job]) -> None:
    """Every row of these jobs, children first (foreign keys are enforced on both databases)."""
    ids = [job.id for job in jobs]
    deliveries = select(WebhookDelivery.id).where(WebhookDelivery.job_id.in_(ids))
    session.execute(delete(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(deliveries)))
    for model in (WebhookDelivery, ModelCall, Chunk, Result, JobEvent, JobDocument):
        session.execute(delete(model).where(model.job_id.in_(ids)))
    for tenant_id in sorted({job.tenant_id for job in jobs}):
        _idempotency_records(session, "jobs", tenant_id,
                             [job.id for job in jobs if job.tenant_id == tenant_id])
    session.execute(delete(Job).where(Job.id.in_(ids)))


def documents_in_use(session: Session, ids: Iterable[str]) -> dict[str, str]:
    """Documents read by a queued or running job: document id -> one such job's id."""
    rows = session.execute(select(JobDocument.document_id, JobDocument.job_id)
                           .join(Job, Job.id == JobDocument.job_id)
                           .where(JobDocument.document_id.in_(list(ids)),
                                  Job.status.in_(UNFINISHED)))
    return {document_id: job_id for document_id, job_id in rows}


@dataclass
class Deleted:
    """Documents whose rows are deleted, and the stored files no row refers to any more."""

    documents: list[str] = field(default_factory=list)
    files: set[str] = field(default_factory=set)


def delete_documents(session: Session, ids: Sequence[str]) -> Deleted:
    """Deletes the rows of those documents that nothing needs (not processing, no unfinished
    job reads them) and returns what was deleted. The rows are locked first, then checked: on
    PostgreSQL a job being created holds them (``lock_documents``), so either it commits first
    and is seen here, or it waits and then finds them gone."""
    docs = list(session.scalars(select(Document).where(Document.id.in_(list(ids)))
                                .order_by(Document.id).with_for_update()))
    busy = documents_in_use(session, [d.id for d in docs])
    gone = [d for d in docs if d.id not in busy and d.status != DocumentStatus.PROCESSING]
    out = Deleted(documents=[d.id for d in gone])
    if not gone:
        return out
    doc_ids = out.documents
    keys = {d.sha256 for d in gone if d.sha256}
    keys |= set(session.scalars(select(DocumentBlob.key).where(DocumentBlob.document_id.in_(doc_ids))))
    session.execute(delete(DocumentBlob).where(DocumentBlob.document_id.in_(doc_ids)))
    session.execute(delete(JobDocument).where(JobDocument.document_id.in_(doc_ids)))
    for tenant_id in sorted({d.tenant_id for d in gone}):
        _idempotency_records(session, "documents", tenant_id,
                             [d.id for d in gone if d.tenant_id == tenant_id])
    session.execute(delete(Document).where(Document.id.in_(doc_ids)))
    out.files = keys - referenced(session, sorted(keys)) if keys else set()
    return out


def remove_files(storage: BlobStore, keys: Iterable[str], since: float) -> int:
    """Removes the files of deleted rows, except one stored again since ``since`` (an upload
    of the same content may be about to commit a row that refers to it: the blob sweep
    collects it later if not)."""
    removed = 0
    for key in keys:
        if storage.delete_if_older(key, max(0.0, time.time() - since)):
            removed += 1
    return removed


def _settle_ended(db: Database, settings: Settings, now: datetime) -> int:
    settled = 0
    while True:
        with db.unit_of_work() as uow:
            serialize(uow.session)
            jobs = list(uow.session.scalars(
                select(Job).where(Job.charged_at.is_(None), Job.status.in_(ENDED),
                                  *_idle(now, settings.call_in_flight_s))
                .order_by(Job.finished_at).limit(BATCH).with_for_update(skip_locked=True)))
            for job in jobs:
                settle(uow.session, settings, job, now)
        settled += len(jobs)
        if len(jobs) < BATCH:
            return settled


def _purge_jobs(db: Database, settings: Settings, now: datetime) -> int:
    cutoff = now - timedelta(seconds=settings.retention_seconds)
    due = [or_(Job.purge_at <= now, and_(Job.finished_at <= cutoff, Job.status.in_(ENDED))),
           Job.charged_at.is_not(None)]
    purged = 0
    while True:
        with db.session(readonly=True) as session:
            found = session.execute(select(Job.id, Job.chunks_total).where(*due).limit(BATCH)).all()
        if not found:
            return purged
        batch: list[str] = []
        rows = 0
        for job_id, chunks in found:  # as many as fit in one short transaction (one at least)
            if batch and rows + job_rows(chunks) > ROWS:
                break
            batch.append(job_id)
            rows += job_rows(chunks)
        if rows > ROWS:
            trim_job(db, batch[0])
        with db.unit_of_work() as uow:
            serialize(uow.session)
            jobs = list(uow.session.scalars(select(Job).where(Job.id.in_(batch), *due)
                                            .with_for_update(skip_locked=True)))
            if jobs:
                delete_job_rows(uow.session, jobs)
        purged += len(jobs)
        if not jobs or (len(found) < BATCH and len(batch) == len(found)):
            return purged


def _purge_documents(db: Database, storage: BlobStore, settings: Settings,
                     now: datetime) -> int:
    cutoff = now - timedelta(seconds=settings.retention_seconds)
    reading = exists().where(JobDocument.document_id == Document.id, Job.id == JobDocument.job_id,
                             Job.status.in_(UNFINISHED))
    purged = 0
    while True:
        with db.session(readonly=True) as session:
            found = session.execute(
                select(Document.id, Document.pages)
                .where(or_(Document.purge_at <= now, Document.created_at <= cutoff),
                       Document.status != DocumentStatus.PROCESSING, ~reading)
                .limit(BATCH)).all()
        if not found:
            return purged
        batch: list[str] = []
        rows = 0
        for doc_id, pages in found:  # a page can have a stored render: a row each
            if batch and rows + (pages or 0) + 4 > ROWS:
                break
            batch.append(doc_id)
            rows += (pages or 0) + 4
        since = time.time()
        with db.unit_of_work() as uow:
            deleted = delete_documents(uow.session, batch)
        remove_files(storage, deleted.files, since)
        purged += len(deleted.documents)
        if not deleted.documents or (len(found) < BATCH and len(batch) == len(found)):
            return purged


def purge(db: Database, storage: BlobStore, settings: Settings) -> None:
    """What beat runs every ``LONGDOC_PURGE_INTERVAL_S``: ended jobs are charged and given
    their purge time, then due jobs and due documents are deleted."""
    now = utcnow()
    settled = _settle_ended(db, settings, now)
    jobs = _purge_jobs(db, settings, now)
    documents = _purge_documents(db, storage, settings, now)
    if jobs or documents:
        log.info("retention.purged", jobs=jobs, documents=documents, settled=settled)
