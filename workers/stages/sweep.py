"""What beat runs. Every few seconds, the recovery sweep: the database is the schedule, so
whatever is runnable and unclaimed is sent again — an expired lease (its worker died) at once, a
task sent long ago and never claimed (the broker lost it) after ``LONGDOC_REDISPATCH_S``. Then the
free dispatch slots are filled and the webhook attempts that are due are sent. Every few seconds
too, the retention purge deletes what is due; now and then, the stored files no row refers to are
collected.

Each step is a short transaction over indexed columns (status, then lease and dispatch times):
its cost does not grow with the jobs that have ended.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, exists, or_, select, update

from schemas.tasks import Task
from service.core.logs import log
from service.core.profiles import ModelProfile
from service.store import retention
from service.store.blobs import collect_unreferenced
from service.store.db import UnitOfWork
from service.store.dispatch import dispatch
from service.store.models import (
    Chunk,
    ChunkStatus,
    DeliveryStatus,
    Document,
    DocumentStatus,
    IdempotencyKey,
    Job,
    JobDocument,
    JobStatus,
    Leased,
    Result,
    WebhookDelivery,
    utcnow,
)
from workers.context import WorkerContext
from workers.stages.common import mark_unknown_calls

BATCH = 500


def _stale(model: Any, now: datetime, redispatch_before: datetime) -> Any:
    """Runnable and unclaimed: a lease (or a hold after a failure) that has lapsed, or never a
    claim and a dispatch older than the redispatch delay (the message was lost)."""
    return or_(model.lease_until < now,
               and_(model.lease_until.is_(None),
                    or_(model.dispatched_at.is_(None), model.dispatched_at < redispatch_before)))


def _resend(row: Leased, now: datetime) -> bool:
    """Clears a lapsed lease; returns whether it was a claim (an interrupted attempt)."""
    interrupted = row.lease_owner is not None
    row.lease_owner, row.lease_until, row.dispatched_at = None, None, now
    return interrupted


def recover(ctx: WorkerContext) -> int:
    now = utcnow()
    before = now - timedelta(seconds=ctx.settings.redispatch_s)
    sent = 0
    with ctx.unit_of_work() as uow:
        sent += _documents(uow, now, before)
        sent += _jobs_to_plan(uow, now, before)
        sent += _jobs_to_finalize(uow, now, before, ctx.profile)
    _chunks(ctx, now, before)
    if sent:
        log.info("sweep.resent", tasks=sent)
    return sent


def _documents(uow: UnitOfWork, now: datetime, before: datetime) -> int:
    docs = uow.session.scalars(select(Document).where(
        Document.status == DocumentStatus.PROCESSING, _stale(Document, now, before)).limit(BATCH))
    count = 0
    for doc in docs:
        if _resend(doc, now):
            doc.attempts += 1
        uow.send(Task.INGEST_DOCUMENT, doc.id)
        count += 1
    return count


def _jobs_to_plan(uow: UnitOfWork, now: datetime, before: datetime) -> int:
    processing = exists().where(JobDocument.job_id == Job.id, Document.id == JobDocument.document_id,
                                Document.status == DocumentStatus.PROCESSING)
    jobs = uow.session.scalars(select(Job).where(
        Job.status == JobStatus.QUEUED, _stale(Job, now, before), ~processing).limit(BATCH))
    count = 0
    for job in jobs:
        if _resend(job, now):
            job.attempts += 1
        uow.send(Task.PLAN_JOB, job.id)
        count += 1
    return count


def _jobs_to_finalize(uow: UnitOfWork, now: datetime, before: datetime,
                      profile: ModelProfile) -> int:
    stored = exists().where(Result.job_id == Job.id)
    jobs = uow.session.scalars(select(Job).where(
        Job.status == JobStatus.RUNNING, Job.finalizing.is_(True), _stale(Job, now, before),
        ~stored).limit(BATCH))
    count = 0
    for job in jobs:
        if _resend(job, now):
            job.attempts += 1
            mark_unknown_calls(uow.session, job, profile, purpose="merge")
        uow.send(Task.FINALIZE_JOB, job.id)
        count += 1
    return count


def _chunks(ctx: WorkerContext, now: datetime, before: datetime) -> None:
    """A running chunk whose lease lapsed goes back to pending (its calls in flight are on the
    books as unknown); a chunk dispatched long ago and never claimed is dispatched again.

    Each lapsed chunk is taken in a transaction of its own, under its job's lock (the order its
    worker takes them in) and only if it is still lapsed then: a worker presumed dead that
    answers meanwhile has closed the chunk, and reopening it would ask (and pay) again."""
    with ctx.db.session(readonly=True) as session:
        lapsed = session.execute(select(Chunk.id, Chunk.job_id).where(
            Chunk.status == ChunkStatus.RUNNING, Chunk.lease_until < now).limit(BATCH)).all()
    for chunk_id, job_id in lapsed:
        with ctx.unit_of_work() as uow:
            job = uow.session.scalar(select(Job).where(Job.id == job_id).with_for_update())
            chunk = uow.session.scalar(select(Chunk).where(
                Chunk.id == chunk_id, Chunk.status == ChunkStatus.RUNNING,
                Chunk.lease_until < now).with_for_update())
            if chunk is None:
                continue  # answered, renewed or deleted meanwhile
            if job is not None:
                mark_unknown_calls(uow.session, job, ctx.profile, chunk_id=chunk.id)
            chunk.attempts += 1
            chunk.status, chunk.lease_owner, chunk.lease_until = ChunkStatus.PENDING, None, None
            log.info("sweep.chunk_recovered", chunk_id=chunk.id, attempts=chunk.attempts)
    with ctx.unit_of_work() as uow:
        # A claim may race this: the statement re-checks the row, so a chunk claimed meanwhile
        # stays running.
        lost = select(Chunk.id).where(Chunk.status == ChunkStatus.DISPATCHED,
                                      Chunk.dispatched_at < before).limit(BATCH)
        uow.session.execute(update(Chunk).where(
            Chunk.id.in_(lost.scalar_subquery()), Chunk.status == ChunkStatus.DISPATCHED,
            Chunk.dispatched_at < before).values(status=ChunkStatus.PENDING)
            .execution_options(synchronize_session=False))


def deliveries_due(uow: UnitOfWork, now: datetime) -> None:
    due = uow.session.scalars(
        select(WebhookDelivery.id)
        .where(WebhookDelivery.status == DeliveryStatus.PENDING,
               WebhookDelivery.next_attempt_at <= now)
        .order_by(WebhookDelivery.next_attempt_at).limit(BATCH))
    for delivery_id in due:
        uow.send(Task.DELIVER_WEBHOOK, delivery_id)


def sweep(ctx: WorkerContext) -> None:
    recover(ctx)
    with ctx.unit_of_work() as uow:
        dispatch(uow, ctx.settings.dispatch_window)
    now = utcnow()
    with ctx.unit_of_work() as uow:
        deliveries_due(uow, now)
        expired = now - timedelta(seconds=ctx.settings.idempotency_ttl_s)
        old = select(IdempotencyKey.id).where(IdempotencyKey.created_at < expired).limit(BATCH)
        uow.session.execute(delete(IdempotencyKey).where(IdempotencyKey.id.in_(old)))


def collect_blobs(ctx: WorkerContext) -> None:
    collect_unreferenced(ctx.db, ctx.storage, ctx.settings.blob_gc_grace_s)


def purge(ctx: WorkerContext) -> None:
    """Retention: ended jobs are charged and given their purge time, what is due is deleted
    (``service.store.retention``)."""
    retention.purge(ctx.db, ctx.storage, ctx.settings)
