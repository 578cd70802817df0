"""Which chunks go to the model queue next: the database is the schedule.

A chunk is runnable when it is pending, its job is running and any outage wait (``not_before``)
has passed. At most ``LONGDOC_DISPATCH_WINDOW`` chunks are dispatched or running at a time, so
the broker only ever holds the next few calls; free slots go to tenants by fair share (the
tenant with the fewest calls in flight first, each tenant's oldest chunks first), so one
tenant's backlog of thousands of chunks delays another's one-page job by a few calls at most.

Dispatching is one short transaction, serialised across processes (SQLite serialises writers;
PostgreSQL takes an advisory transaction lock), and it runs wherever slots free up: when a job
starts, when a chunk ends, and in the recovery sweep.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, and_, func, or_, select, text, update
from sqlalchemy.orm import Session

from schemas.tasks import Task
from service.store.db import UnitOfWork
from service.store.models import Chunk, ChunkStatus, Job, JobStatus, utcnow

_LOCK = 0x6C6F6E67  # "long": the advisory lock of the dispatcher on PostgreSQL


def _runnable(now: datetime) -> list[ColumnElement[bool]]:
    return [Chunk.status == ChunkStatus.PENDING,
            or_(Chunk.not_before.is_(None), Chunk.not_before <= now),
            or_(Chunk.lease_until.is_(None), Chunk.lease_until < now),
            Chunk.job_id.in_(select(Job.id).where(Job.status == JobStatus.RUNNING))]


def _in_flight() -> ColumnElement[bool]:
    """Chunks that hold a slot: those running, and those dispatched for a job still running. A
    dispatched chunk of a job that was canceled or failed is never called (its task sees the
    job has ended and leaves it), so it does not hold a slot until the sweep resets it: a
    tenant canceling a large job frees the window at once."""
    running_jobs = select(Job.id).where(Job.status == JobStatus.RUNNING)
    return or_(Chunk.status == ChunkStatus.RUNNING,
               and_(Chunk.status == ChunkStatus.DISPATCHED, Chunk.job_id.in_(running_jobs)))


def fair_order(in_flight: dict[str, int], candidates: dict[str, list[str]], slots: int) -> list[str]:
    """Chunk ids for ``slots`` free slots: each slot to the tenant with the fewest calls in
    flight (given so far included), ties to the tenant named first (its oldest chunk is oldest)."""
    load = {tenant: in_flight.get(tenant, 0) for tenant in candidates}
    queues = {tenant: list(ids) for tenant, ids in candidates.items()}
    picked: list[str] = []
    while len(picked) < slots:
        ready = [t for t in queues if queues[t]]
        if not ready:
            break
        tenant = min(ready, key=lambda t: load[t])
        picked.append(queues[tenant].pop(0))
        load[tenant] += 1
    return picked


def cancel_chunks(session: Session, job_id: str) -> int:
    """A job that ended before all its chunks ran: those not yet claimed give their dispatch
    slots back at once (a claimed one gives it back when its call ends)."""
    result = session.execute(
        update(Chunk).where(Chunk.job_id == job_id, Chunk.status.in_(
            (ChunkStatus.PENDING, ChunkStatus.DISPATCHED, ChunkStatus.HELD)))
        .values(status=ChunkStatus.CANCELED))
    return int(cast(CursorResult[Any], result).rowcount)


def dispatch(uow: UnitOfWork, window: int) -> int:
    """Dispatches runnable chunks into the free slots of the window; returns how many."""
    session = uow.session
    if session.connection().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK})
    now = utcnow()
    flying: dict[str, int] = {tenant: count for tenant, count in session.execute(
        select(Chunk.tenant_id, func.count()).where(_in_flight())
        .group_by(Chunk.tenant_id))}
    slots = window - sum(flying.values())
    if slots <= 0:
        return 0
    conditions = _runnable(now)
    tenants = list(session.scalars(
        select(Chunk.tenant_id).where(*conditions).group_by(Chunk.tenant_id)
        .order_by(func.min(Chunk.created_at))))
    if not tenants:
        return 0
    candidates = {tenant: list(session.scalars(
        select(Chunk.id).where(*conditions, Chunk.tenant_id == tenant)
        .order_by(Chunk.created_at, Chunk.job_id, Chunk.ordinal).limit(slots)))
        for tenant in tenants}
    picked = fair_order(flying, candidates, slots)
    if not picked:
        return 0
    session.execute(update(Chunk).where(Chunk.id.in_(picked), Chunk.status == ChunkStatus.PENDING)
                    .values(status=ChunkStatus.DISPATCHED, dispatched_at=now))
    for chunk_id in picked:
        uow.send(Task.EXTRACT_CHUNK, chunk_id)
    return len(picked)
