"""What several stages do: end a job (with its webhook event), record a model call's usage,
and fail what a task was for when it kept raising."""

from __future__ import annotations

from enum import StrEnum

from schemas.errors import ErrorCode
from schemas.tasks import Task
from service.core.logs import log
from service.core.profiles import ModelProfile
from service.core.webhooks import event_body
from service.store.db import UnitOfWork
from service.store.jobs import job_document_ids, jobs_waiting_on
from service.store.models import (
    Chunk,
    Document,
    DocumentStatus,
    Job,
    JobStatus,
    ModelCall,
    WebhookDelivery,
    new_id,
    utcnow,
)
from service.store.views import job_out
from workers.context import WorkerContext
from workers.model_client import CallResult


class Subject(StrEnum):
    """What a task works on, and so what fails when it cannot be done."""

    DOCUMENT = "document"
    JOB = "job"
    CHUNK = "chunk"


def finish_job(uow: UnitOfWork, job: Job, status: JobStatus, code: str | None = None,
               message: str | None = None) -> None:
    job.status, job.finished_at = status, utcnow()
    job.error_code, job.error_message = code, message
    if status == JobStatus.FAILED:
        # Codes and ids only: a message can quote what the model extracted.
        log.warning("job.failed", job_id=job.id, code=code)
    if job.webhook_url and status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        uow.session.flush()
        view = job_out(job, job_document_ids(uow.session, job.id)).model_dump(mode="json")
        view["result_url"] = f"/v1/jobs/{job.id}/result" if status == JobStatus.SUCCEEDED else None
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


def fail_jobs_waiting_on(uow: UnitOfWork, document_id: str, reason: str) -> None:
    for job in jobs_waiting_on(uow.session, document_id):
        fail_job(uow, job, ErrorCode.DOCUMENT_FAILED, f"document {document_id} failed: {reason}")


def record_call(job: Job, chunk_id: str | None, call: CallResult | None, predicted: int,
                profile: ModelProfile) -> ModelCall | None:
    """The call's row and its usage added to the job; the caller adds the row to its session."""
    if call is None:
        return None
    cost = profile.cost_usd(call.prompt_tokens, call.cached_tokens, call.completion_tokens)
    row = ModelCall(
        job_id=job.id, chunk_id=chunk_id, model=call.model, status_code=200,
        finish_reason=call.finish_reason, predicted_prompt_tokens=predicted,
        prompt_tokens=call.prompt_tokens, cached_tokens=call.cached_tokens,
        completion_tokens=call.completion_tokens, cost_usd=cost,
        gateway_cost_usd=call.gateway_cost_usd, latency_ms=call.latency_ms)
    job.prompt_tokens += call.prompt_tokens
    job.cached_tokens += call.cached_tokens
    job.completion_tokens += call.completion_tokens
    job.cost_usd += cost
    if call.gateway_cost_usd is not None:
        job.gateway_cost_usd = (job.gateway_cost_usd or 0.0) + call.gateway_cost_usd
    job.model = job.model or call.model
    if predicted and call.prompt_tokens != predicted:
        log.info("model.call.count_mismatch", job_id=job.id, predicted=predicted,
                 reported=call.prompt_tokens)
    return row


def fail_after_error(ctx: WorkerContext, subject: Subject, object_id: str,
                     error: BaseException) -> None:
    """A task that kept raising (a bug, a database outage) ends its document or job as failed
    instead of leaving it waiting forever."""
    message = f"internal error: {type(error).__name__}"
    with ctx.unit_of_work() as uow:
        job: Job | None = None
        if subject == Subject.DOCUMENT:
            doc = uow.session.get(Document, object_id)
            if doc is not None and doc.status == DocumentStatus.PROCESSING:
                doc.status, doc.error_code = DocumentStatus.FAILED, ErrorCode.INTERNAL_ERROR
                doc.error_message, doc.password_sealed = message, None
            fail_jobs_waiting_on(uow, object_id, message)
        elif subject == Subject.CHUNK:
            chunk = uow.session.get(Chunk, object_id)
            job = uow.session.get(Job, chunk.job_id) if chunk is not None else None
        else:
            job = uow.session.get(Job, object_id)
        if job is not None:
            fail_job(uow, job, ErrorCode.INTERNAL_ERROR, message)
    log.error("task.failed", kind=subject, id=object_id, error=type(error).__name__)
