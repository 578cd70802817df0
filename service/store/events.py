"""Job events: every change a user can watch (status, chunks and cost, the ingestion of the job's
documents), appended in the transaction that made the change.

One ``before_flush`` listener sees every new or changed ``Job``, ``Document`` and
``JobDocument`` row of every session, so no stage has to remember to report what it did, and an
event exists exactly when its change committed. Readers (long-poll, SSE) tail the table by id.

Order: an event's id is its position in the job's stream. On SQLite writers are serialised, so
ids follow commit order. On PostgreSQL ids are taken at insert time, not at commit, so two
transactions writing events of one job could commit out of id order and a reader tailing by id
would skip the smaller one; the listener therefore takes a transaction-scoped advisory lock per
job before inserting, which holds the second writer until the first has committed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import event, func, inspect, select, text
from sqlalchemy.orm import Session, UOWTransaction

from schemas.api import JobEventOut, JobEventType, JobStatus
from service.store.models import Document, Job, JobDocument, JobEvent

PROGRESS_FIELDS = ("chunks_done", "chunks_total", "prompt_tokens", "cached_tokens",
                   "completion_tokens", "unknown_calls", "cost_usd", "waiting_reason")
DOCUMENT_FIELDS = ("status", "pages", "pages_parsed", "error_code")

# Within one flush: a job that starts reports its status before its counts, one that ends after.
_STARTS, _DOCUMENT, _PROGRESS, _ENDS = range(4)


def _changed(obj: object, fields: Sequence[str]) -> bool:
    state = inspect(obj)
    for name in fields:
        history = state.attrs[name].history
        if history.added and list(history.added) != list(history.deleted):
            return True
    return False


def _error(code: str | None, message: str | None) -> dict[str, str] | None:
    return {"code": code, "message": message or ""} if code else None


def status_data(job: Job) -> dict[str, Any]:
    return {"status": job.status, "error": _error(job.error_code, job.error_message)}


def progress_data(job: Job) -> dict[str, Any]:
    waiting = ({"reason": job.waiting_reason,
                "since": job.waiting_since.isoformat() if job.waiting_since else None}
               if job.waiting_reason else None)
    return {"chunks_done": job.chunks_done, "chunks_total": job.chunks_total,
            "usage": {"prompt_tokens": job.prompt_tokens, "cached_tokens": job.cached_tokens,
                      "completion_tokens": job.completion_tokens,
                      "reasoning_tokens": job.reasoning_tokens or 0,
                      "unknown_calls": job.unknown_calls or 0},
            "cost_usd": round(job.cost_usd or 0.0, 8), "cost_is_estimate": bool(job.unknown_calls),
            "waiting": waiting}


def document_data(doc: Document) -> dict[str, Any]:
    return {"document_id": doc.id, "status": doc.status, "pages": doc.pages,
            "pages_parsed": doc.pages_parsed, "error": _error(doc.error_code, doc.error_message)}


def _job_events(job: Job, new: bool) -> list[tuple[int, JobEvent]]:
    out: list[tuple[int, JobEvent]] = []
    if new or _changed(job, ("status",)):
        rank = _ENDS if JobStatus(job.status).ended else _STARTS
        out.append((rank, JobEvent(job_id=job.id, type=JobEventType.STATUS,
                                   data=status_data(job))))
    if (new and job.chunks_total) or (not new and _changed(job, PROGRESS_FIELDS)):
        out.append((_PROGRESS, JobEvent(job_id=job.id, type=JobEventType.PROGRESS,
                                        data=progress_data(job))))
    return out


def _jobs_reading(session: Session, document_id: str) -> list[str]:
    return list(session.scalars(
        select(JobDocument.job_id).join(Job, Job.id == JobDocument.job_id)
        .where(JobDocument.document_id == document_id,
               Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)))))


@event.listens_for(Session, "before_flush")
def _append_job_events(session: Session, _ctx: UOWTransaction, _instances: Any) -> None:
    found: list[tuple[int, JobEvent]] = []
    new = set(session.new)
    for obj in [*session.new, *session.dirty]:
        if isinstance(obj, Job):
            found += _job_events(obj, obj in new)
        elif isinstance(obj, Document) and obj not in new and _changed(obj, DOCUMENT_FIELDS):
            data = document_data(obj)
            found += [(_DOCUMENT, JobEvent(job_id=job_id, type=JobEventType.DOCUMENT, data=data))
                      for job_id in _jobs_reading(session, obj.id)]
        elif isinstance(obj, JobDocument) and obj in new:
            # A job starts its stream with where each of its documents stands.
            doc = session.get(Document, obj.document_id)
            if doc is not None:
                found.append((_DOCUMENT, JobEvent(job_id=obj.job_id, type=JobEventType.DOCUMENT,
                                                  data=document_data(doc))))
    if not found:
        return
    found.sort(key=lambda item: (item[1].job_id, item[0]))
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        for job_id in sorted({e.job_id for _, e in found}):  # one order: no deadlock between us
            connection.execute(text("SELECT pg_advisory_xact_lock(hashtext(:job))"), {"job": job_id})
    session.add_all([e for _, e in found])


def event_out(row: JobEvent) -> JobEventOut:
    return JobEventOut(id=row.id, job_id=row.job_id, type=JobEventType(row.type),
                       at=row.created_at, data=row.data)


def events_after(session: Session, job_id: str, after: int, limit: int = 500) -> list[JobEvent]:
    return list(session.scalars(select(JobEvent)
                                .where(JobEvent.job_id == job_id, JobEvent.id > after)
                                .order_by(JobEvent.id).limit(limit)))


def last_event_id(session: Session, job_id: str) -> int:
    """The id of the job's latest event (0 without any): an index-only lookup, cheap to poll."""
    return session.scalar(select(func.max(JobEvent.id)).where(JobEvent.job_id == job_id)) or 0
