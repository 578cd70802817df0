"""What several stages do: end a job (with its webhook event), keep every model call on the
books, and hold back (then fail) what a task was for when it raised."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from schemas.errors import ErrorCode
from schemas.tasks import Task
from service.core.logs import log
from service.core.profiles import ModelProfile
from service.core.webhooks import event_body
from service.store.db import UnitOfWork
from service.store.dispatch import cancel_chunks
from service.store.jobs import job_document_ids, jobs_waiting_on
from service.store.leases import release
from service.store.models import (
    CallStatus,
    Chunk,
    ChunkStatus,
    Document,
    DocumentStatus,
    Job,
    JobStatus,
    ModelCall,
    WebhookDelivery,
    new_id,
    utcnow,
)
from service.store.quotas import charge_late
from service.store.views import job_out
from workers.context import WorkerContext
from workers.model_client import CallResult


class Subject(StrEnum):
    """What a task works on, and so what fails when it cannot be done."""

    DOCUMENT = "document"
    JOB = "job"
    CHUNK = "chunk"


def finish_job(uow: UnitOfWork, job: Job, status: JobStatus, code: str | None = None,
               message: str | None = None, result: dict[str, Any] | None = None,
               max_result_bytes: int = 0) -> None:
    """Ends the job; with a webhook, its event is recorded in the same transaction. A
    ``job.succeeded`` event carries the result (``data``, ``warnings``, ``sources``) when its
    JSON fits ``max_result_bytes``; above it, ``result_included: false`` and ``result_url``."""
    job.status, job.finished_at = status, utcnow()
    job.error_code, job.error_message = code, message
    if status == JobStatus.FAILED:
        # Codes and ids only: a message can quote what the model extracted.
        log.warning("job.failed", job_id=job.id, code=code)
    if job.webhook_url and status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        uow.session.flush()
        view = job_out(job, job_document_ids(uow.session, job.id)).model_dump(mode="json")
        view["result_url"] = f"/v1/jobs/{job.id}/result" if status == JobStatus.SUCCEEDED else None
        if status == JobStatus.SUCCEEDED and result is not None:
            size = len(json.dumps(result))  # measured as event_body writes it (ASCII escapes)
            view["result_included"] = size <= max_result_bytes
            if view["result_included"]:
                view["result"] = result
        now = utcnow()
        delivery = WebhookDelivery(
            id="msg_" + new_id("x")[2:], tenant_id=job.tenant_id, job_id=job.id,
            url=job.webhook_url, event=f"job.{status}",
            payload=event_body(f"job.{status}", view, now), next_attempt_at=now)
        uow.session.add(delivery)
        uow.send(Task.DELIVER_WEBHOOK, delivery.id)


def fail_job(uow: UnitOfWork, job: Job, code: str, message: str) -> None:
    if not JobStatus(job.status).ended:
        finish_job(uow, job, JobStatus.FAILED, code, message)
        cancel_chunks(uow.session, job.id)


def fail_jobs_waiting_on(uow: UnitOfWork, document_id: str, reason: str) -> None:
    for job in jobs_waiting_on(uow.session, document_id):
        fail_job(uow, job, ErrorCode.DOCUMENT_FAILED, f"document {document_id} failed: {reason}")


def open_call(uow: UnitOfWork, job: Job, chunk_id: str | None, predicted: int,
              purpose: str = "extract") -> ModelCall:
    """The call's row, written before the request leaves: every call the endpoint may bill is
    on the books, whatever happens to this worker next."""
    row = ModelCall(job_id=job.id, chunk_id=chunk_id, status=CallStatus.SENT, purpose=purpose,
                    predicted_prompt_tokens=predicted)
    uow.session.add(row)
    uow.session.flush()
    return row


def settle_call(session: Session, job: Job, row: ModelCall, call: CallResult | None,
                error: str | None, profile: ModelProfile) -> None:
    """Records how a call ended, and its usage on the job (once: a call already settled as
    unknown by the sweep has its estimate replaced by what was reported)."""
    estimate = 0.0
    if row.status == CallStatus.UNKNOWN:
        job.unknown_calls = max(0, job.unknown_calls - 1)
        estimate, row.cost_usd = row.cost_usd, 0.0
        job.cost_usd -= estimate
    elif row.status != CallStatus.SENT:
        return
    if call is None:
        row.status, row.error = CallStatus.FAILED, (error or "no answer")[:500]
        charge_late(session, job, utcnow(), cost_usd=-estimate)
        return
    cost = profile.cost_usd(call.prompt_tokens, call.cached_tokens, call.completion_tokens)
    row.status, row.model, row.status_code = CallStatus.ANSWERED, call.model, 200
    row.error = None  # answered after all (the sweep had presumed its worker dead)
    row.finish_reason, row.latency_ms = call.finish_reason, call.latency_ms
    row.prompt_tokens, row.cached_tokens = call.prompt_tokens, call.cached_tokens
    row.completion_tokens, row.cost_usd = call.completion_tokens, cost
    row.reasoning_tokens = call.reasoning_tokens
    row.gateway_cost_usd = call.gateway_cost_usd
    job.prompt_tokens += call.prompt_tokens
    job.cached_tokens += call.cached_tokens
    job.completion_tokens += call.completion_tokens
    job.reasoning_tokens = (job.reasoning_tokens or 0) + call.reasoning_tokens
    job.cost_usd += cost
    if call.gateway_cost_usd is not None:
        job.gateway_cost_usd = (job.gateway_cost_usd or 0.0) + call.gateway_cost_usd
    job.model = job.model or call.model
    charge_late(session, job, utcnow(), prompt_tokens=call.prompt_tokens,
                completion_tokens=call.completion_tokens, cost_usd=cost - estimate)
    if row.predicted_prompt_tokens and call.prompt_tokens != row.predicted_prompt_tokens:
        log.info("model.call.count_mismatch", job_id=job.id,
                 predicted=row.predicted_prompt_tokens, reported=call.prompt_tokens)


def mark_unknown_calls(session: Session, job: Job, profile: ModelProfile,
                       chunk_id: str | None = None, purpose: str = "extract") -> int:
    """Calls left in flight by a worker that died: the endpoint may have answered and billed
    them. Their predicted prompt goes into the job's cost as an estimate (flagged)."""
    query = select(ModelCall).where(ModelCall.job_id == job.id, ModelCall.status == CallStatus.SENT,
                                    ModelCall.purpose == purpose)
    if chunk_id is not None:
        query = query.where(ModelCall.chunk_id == chunk_id)
    rows = list(session.scalars(query))
    for row in rows:
        row.status, row.error = CallStatus.UNKNOWN, "its worker stopped while the call was in flight"
        row.cost_usd = profile.cost_usd(row.predicted_prompt_tokens, 0, 0)
        job.cost_usd += row.cost_usd
        job.unknown_calls += 1
        charge_late(session, job, utcnow(), cost_usd=row.cost_usd)
    return len(rows)


def backoff_s(attempts: int, cap: float) -> float:
    return float(min(cap, 2 ** max(0, attempts - 1)))


def record_failure(ctx: WorkerContext, subject: Subject, object_id: str,
                   error: BaseException) -> None:
    """A task raised (a bug, a lost file, a database blip): the row is held back for a while and
    the recovery sweep sends it again; after ``task_max_attempts`` its document or job fails
    with ``internal_error`` instead of waiting forever."""
    message = f"internal error: {type(error).__name__}"
    settings = ctx.settings
    log.error("task.failed", kind=subject, id=object_id, error=type(error).__name__)
    with ctx.unit_of_work() as uow:
        row: Document | Job | Chunk | None
        if subject == Subject.DOCUMENT:
            row = uow.session.get(Document, object_id)
        elif subject == Subject.CHUNK:
            row = uow.session.get(Chunk, object_id)
        else:
            row = uow.session.get(Job, object_id)
        if row is None:
            return
        row.attempts += 1
        give_up = row.attempts >= settings.task_max_attempts
        release(row, 0.0 if give_up else backoff_s(row.attempts, settings.lease_s))
        if isinstance(row, Document):
            if give_up and row.status == DocumentStatus.PROCESSING:
                row.status, row.error_code = DocumentStatus.FAILED, ErrorCode.INTERNAL_ERROR
                row.error_message, row.password_sealed = message, None
                fail_jobs_waiting_on(uow, object_id, message)
            return
        job = row if isinstance(row, Job) else uow.session.get(Job, row.job_id)
        if job is None:
            return
        if isinstance(row, Chunk):
            mark_unknown_calls(uow.session, job, ctx.profile, chunk_id=row.id)
            if row.status == ChunkStatus.RUNNING:
                row.status = ChunkStatus.PENDING
        elif job.finalizing:
            mark_unknown_calls(uow.session, job, ctx.profile, purpose="merge")
        if give_up:
            fail_job(uow, job, ErrorCode.INTERNAL_ERROR, message)
