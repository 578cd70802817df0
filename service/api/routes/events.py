"""Progress without polling: a job's events as Server-Sent Events, and the wait behind
``GET /v1/jobs/{id}?wait=…``.

Both tail ``job_events`` with a cheap indexed query every ``POLL_S`` from the event loop, each in
a short read-only session of its own: no transaction stays open while a client waits, and the
database, which already orders the events, stays the only source of truth (see
docs/architecture.md, "Live progress").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from schemas.api import JobEventOut, JobStatus
from schemas.errors import ErrorCode, LongdocError
from service.api.deps import CurrentTenant, ServicesDep, SessionDep
from service.api.errors import not_found
from service.api.routes.common import error_responses
from service.store.db import Database
from service.store.events import event_out, events_after, last_event_id
from service.store.models import Job, is_id

POLL_S = 0.2  # how soon a waiting client hears of a change
HEARTBEAT_S = 15.0  # a comment line keeps proxies from closing an idle stream
BATCH = 500

MAX_EVENT_ID = 2**63 - 1  # ids are 64-bit integers

router = APIRouter(prefix="/v1/jobs", tags=["jobs"],
                   responses=error_responses(_401="unauthorized", _404="not_found"))


def latest_event(db: Database, job_id: str) -> int:
    with db.session(readonly=True) as session:
        return last_event_id(session, job_id)


async def wait_for_change(request: Request, db: Database, job_id: str, after: int,
                          timeout: float) -> None:
    """Returns once the job has an event newer than ``after``, the timeout has passed, or the
    client has gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await run_in_threadpool(latest_event, db, job_id) > after:
            return
        if await request.is_disconnected():
            return
        await asyncio.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))


def _next_events(db: Database, job_id: str, after: int) -> tuple[list[JobEventOut], bool]:
    """The events after ``after`` and whether the stream may end after them: the job had ended
    before they were read, so nothing but these can follow."""
    with db.session(readonly=True) as session:
        job = session.get(Job, job_id) if is_id(job_id, "job") else None
        ended = job is None or JobStatus(job.status).ended
        rows = [event_out(e) for e in events_after(session, job_id, after, BATCH)]
    return rows, ended and len(rows) < BATCH


def sse_message(event: JobEventOut) -> str:
    return f"id: {event.id}\nevent: {event.type}\ndata: {event.model_dump_json()}\n\n"


async def event_stream(db: Database, job_id: str, after: int) -> AsyncIterator[str]:
    yield "retry: 1000\n\n"  # reconnect after a second (the client resends Last-Event-ID)
    quiet_since = time.monotonic()
    while True:
        events, last = await run_in_threadpool(_next_events, db, job_id, after)
        for event in events:
            yield sse_message(event)
            after = event.id
        if last:
            return
        if events:
            quiet_since = time.monotonic()
            continue
        if time.monotonic() - quiet_since >= HEARTBEAT_S:
            yield ": heartbeat\n\n"
            quiet_since = time.monotonic()
        await asyncio.sleep(POLL_S)


@router.get("/{job_id}/events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "the job's events, then live until it ends"}})
def job_events(job_id: str, tenant: CurrentTenant, session: SessionDep, services: ServicesDep,
               last_event_id_header: str | None = Header(None, alias="last-event-id"),
               after: int | None = Query(None, ge=0, le=MAX_EVENT_ID,
                                         description="resume after this event id "
                                         "(as the Last-Event-ID header does)"),
               ) -> StreamingResponse:
    """Every event of the job in order from the beginning (or after ``Last-Event-ID``), then live
    ones as they commit, until the job ends and the stream closes."""
    job = session.get(Job, job_id) if is_id(job_id, "job") else None
    if job is None or job.tenant_id != tenant.id:
        raise not_found("job")
    session.close()  # nothing of the request's transaction is held while streaming
    start = after or 0
    if last_event_id_header:
        if (not last_event_id_header.strip().isdigit()
                or int(last_event_id_header) > MAX_EVENT_ID):
            raise LongdocError(ErrorCode.INVALID_REQUEST, "Last-Event-ID must be an event id")
        start = int(last_event_id_header)
    return StreamingResponse(event_stream(services.db, job_id, start),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
