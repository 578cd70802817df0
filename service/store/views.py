"""Rows as the public API shows them (the webhook events carry the same views)."""

from __future__ import annotations

from schemas.api import (
    AttemptOut,
    CallOut,
    DeliveryOut,
    DocumentOut,
    DocumentStatus,
    ErrorDetail,
    JobOut,
    JobStatus,
    Plan,
    PlanChunk,
    Progress,
    Usage,
    Waiting,
)
from service.core.pages import split_tokens
from service.store.models import Document, Job, ModelCall, WebhookAttempt, WebhookDelivery


def _error(code: str | None, message: str | None) -> ErrorDetail | None:
    return ErrorDetail(code=code, message=message or "") if code else None


def document_out(doc: Document) -> DocumentOut:
    text_tokens, image_tokens = split_tokens(doc.tokens, doc.page_index)
    return DocumentOut(
        id=doc.id, filename=doc.filename, source_url=doc.source_url, sha256=doc.sha256,
        media_type=doc.media_type, bytes=doc.bytes, status=DocumentStatus(doc.status),
        pages=doc.pages, pages_parsed=doc.pages_parsed, tokens=doc.tokens,
        text_tokens=text_tokens, image_tokens=image_tokens,
        error=_error(doc.error_code, doc.error_message), created_at=doc.created_at,
        expires_at=doc.purge_at,
    )


def job_usage(job: Job) -> Usage:
    return Usage(prompt_tokens=job.prompt_tokens, cached_tokens=job.cached_tokens,
                 completion_tokens=job.completion_tokens,
                 reasoning_tokens=job.reasoning_tokens or 0, unknown_calls=job.unknown_calls or 0)


def job_out(job: Job, document_ids: list[str]) -> JobOut:
    plan = None
    if job.plan:
        plan = Plan(calls=job.plan["calls"], budget_tokens=job.plan["budget_tokens"],
                    chunks=[PlanChunk(**c) for c in job.plan["chunks"]],
                    answer=job.plan.get("answer"))
    return JobOut(
        id=job.id, status=JobStatus(job.status), document_ids=document_ids, model=job.model,
        profile=job.profile,
        progress=Progress(chunks_total=job.chunks_total, chunks_done=job.chunks_done),
        usage=job_usage(job), cost_usd=round(job.cost_usd, 8),
        cost_is_estimate=bool(job.unknown_calls), gateway_cost_usd=job.gateway_cost_usd, plan=plan,
        waiting=(Waiting(reason=job.waiting_reason, since=job.waiting_since)
                 if job.waiting_reason and job.waiting_since and job.status == JobStatus.RUNNING
                 else None),
        error=_error(job.error_code, job.error_message), created_at=job.created_at,
        started_at=job.started_at, finished_at=job.finished_at, expires_at=job.purge_at,
    )


def call_out(call: ModelCall) -> CallOut:
    return CallOut(
        chunk_id=call.chunk_id, status=call.status, purpose=call.purpose,
        model=call.model, finish_reason=call.finish_reason, error=call.error,
        predicted_prompt_tokens=call.predicted_prompt_tokens, prompt_tokens=call.prompt_tokens,
        cached_tokens=call.cached_tokens, completion_tokens=call.completion_tokens,
        reasoning_tokens=call.reasoning_tokens or 0, cost_usd=round(call.cost_usd, 8),
        gateway_cost_usd=call.gateway_cost_usd, latency_ms=call.latency_ms,
        answer_used=call.answer_used, answer_items=call.answer_items, at=call.created_at)


def delivery_out(delivery: WebhookDelivery, attempts: list[WebhookAttempt]) -> DeliveryOut:
    return DeliveryOut(
        id=delivery.id, event=delivery.event, url=delivery.url, status=delivery.status,
        attempts=[AttemptOut(at=a.attempted_at, status_code=a.status_code, error=a.error,
                             duration_ms=a.duration_ms) for a in attempts],
        next_attempt_at=delivery.next_attempt_at)
