"""The pipeline stages as plain functions: ingest, plan, extract, finalize, deliver, sweep.

Each takes ids, works in one unit of work, and returns the tasks to send once that unit has
committed (never before: a worker must not see a row that is not there yet).
"""

from __future__ import annotations

import base64
import json
import random
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from schemas.strict import check_schema, drop_optional_nulls, validation_errors
from service.db import session_scope
from service.jobs import (
    TextLoader,
    chunk_view,
    estimate_cost,
    expected_output_tokens,
    job_document_ids,
    job_documents,
    job_out,
    make_plan,
    output_tokens_for_call,
    reserved_output,
    start_job,
)
from service.logs import log
from service.models import (
    Chunk,
    Document,
    Job,
    JobDocument,
    ModelCall,
    Result,
    Tenant,
    WebhookAttempt,
    WebhookDelivery,
    new_id,
    utcnow,
)
from service.pages import index_row, save_pages
from service.planner import Part, PlanningError, split_in_two
from service.profiles import ModelProfile
from service.prompt import format_fields, page_header, system_text
from service.settings import Settings
from service.storage import LocalStorage
from service.webhooks import WebhookSender, event_body, signed_headers
from workers.isolation import run_isolated
from workers.merge import MergeOutcome, apply_choices, merge_answers
from workers.model import CallResult, ModelCallFailed, ModelClient, RequestTooLarge
from workers.parsing import ParseError, PdfOptions, parse_document

# (task name, id) or (task name, id, countdown in seconds)
Outbox = list[tuple[Any, ...]]
TERMINAL = ("succeeded", "failed", "canceled")


# ---------------------------------------------------------------- jobs ending


def _finish_job(session: Session, job: Job, status: str, outbox: Outbox,
                code: str | None = None, message: str | None = None) -> None:
    job.status, job.finished_at = status, utcnow()
    job.error_code, job.error_message = code, message
    if status == "failed":
        log.warning("job.failed", job_id=job.id, code=code, message=message)
    if job.webhook_url and status in ("succeeded", "failed"):
        tenant = session.get(Tenant, job.tenant_id)
        assert tenant is not None
        session.flush()
        view = job_out(job, job_document_ids(session, job.id)).model_dump(mode="json")
        view["result_url"] = f"/v1/jobs/{job.id}/result" if status == "succeeded" else None
        now = utcnow()
        delivery = WebhookDelivery(
            id="msg_" + new_id("x")[2:], tenant_id=job.tenant_id, job_id=job.id,
            url=job.webhook_url, event=f"job.{status}",
            payload=event_body(f"job.{status}", view, now), next_attempt_at=now)
        session.add(delivery)
        outbox.append(("longdoc.deliver_webhook", delivery.id))


def fail_job(session: Session, job: Job, code: str, message: str, outbox: Outbox) -> None:
    if job.status not in TERMINAL:
        _finish_job(session, job, "failed", outbox, code, message)


def fail_after_error(kind: str, object_id: str, error: BaseException) -> Outbox:
    """A task that kept raising (a bug, a database outage) ends its document or job as failed
    instead of leaving it waiting forever."""
    outbox: Outbox = []
    message = f"internal error: {type(error).__name__}"
    with session_scope() as session:
        job: Job | None = None
        if kind == "document":
            doc = session.get(Document, object_id)
            if doc is not None and doc.status == "processing":
                doc.status, doc.error_code, doc.error_message = "failed", "internal_error", message
                doc.password = None
            waiting = session.scalars(
                select(Job).join(JobDocument, JobDocument.job_id == Job.id)
                .where(JobDocument.document_id == object_id, Job.status == "queued"))
            for queued in waiting:
                fail_job(session, queued, "document_failed", f"document {object_id}: {message}",
                         outbox)
        elif kind == "chunk":
            chunk = session.get(Chunk, object_id)
            job = session.get(Job, chunk.job_id) if chunk is not None else None
        else:
            job = session.get(Job, object_id)
        if job is not None:
            fail_job(session, job, "internal_error", message, outbox)
    log.error("task.failed", kind=kind, id=object_id, error=repr(error))
    return outbox


# ---------------------------------------------------------------- ingestion


def _parse_in_child(doc: Document, settings: Settings, storage: LocalStorage,
                    render_all: bool = False) -> dict[str, Any]:
    path = str(storage.path(doc.sha256))
    options = PdfOptions(password=doc.password, max_pages=settings.max_pages,
                         render_all=render_all)

    def work() -> dict[str, Any]:
        pages = parse_document(path, doc.media_type, storage, options)
        return {"pages_key": save_pages(storage, pages),
                "index": [index_row(p) for p in pages],
                "tokens": sum(p.text_tokens for p in pages)}

    return run_isolated(work, cpu_s=settings.parse_cpu_seconds,
                        memory_bytes=settings.parse_memory_bytes, wall_s=settings.parse_wall_seconds)


def ingest_document(document_id: str, settings: Settings, storage: LocalStorage) -> Outbox:
    with session_scope() as session:
        doc = session.get(Document, document_id)
        if doc is None or doc.status != "processing":
            return []
        doc.attempts += 1
        attempts = doc.attempts
    outcome: dict[str, Any] | None = None
    error: tuple[str, str] | None = None
    if attempts > settings.task_max_attempts:
        error = ("document_unreadable", "ingestion was interrupted too many times")
    else:
        try:
            # The password is forgotten after this: render every page now, in case a job
            # reads them as images later.
            outcome = _parse_in_child(doc, settings, storage, render_all=bool(doc.password))
        except ParseError as exc:
            error = (exc.code, exc.message)
    outbox: Outbox = []
    with session_scope() as session:
        doc = session.get(Document, document_id)
        assert doc is not None
        doc.password = None
        if outcome is not None:
            doc.status, doc.pages_key = "ready", outcome["pages_key"]
            doc.page_index, doc.pages = outcome["index"], len(outcome["index"])
            doc.tokens = outcome["tokens"]
            log.info("document.ready", document_id=doc.id, pages=doc.pages, tokens=doc.tokens)
        else:
            assert error is not None
            doc.status, doc.error_code, doc.error_message = "failed", *error
            log.info("document.failed", document_id=doc.id, code=error[0])
    with session_scope() as session:
        # After the commit: a job created meanwhile either saw "ready" or is found here.
        waiting = session.scalars(
            select(Job).join(JobDocument, JobDocument.job_id == Job.id)
            .where(JobDocument.document_id == document_id, Job.status == "queued"))
        for job in waiting:
            if error is not None:
                fail_job(session, job, "document_failed",
                         f"document {document_id} failed: {error[0]}: {error[1]}", outbox)
            else:
                outbox.append(("longdoc.plan_job", job.id))
    return outbox


def ensure_page_images(doc: Document, settings: Settings, storage: LocalStorage) -> None:
    """Renders every page once for jobs that read pages as images (``pages_as_images``)."""
    if doc.media_type != "application/pdf" or not doc.pages_key:
        return
    if all(row[0] == "image" or row[4] for row in doc.page_index or []):
        return
    outcome = _parse_in_child(doc, settings, storage, render_all=True)
    with session_scope() as session:
        row = session.get(Document, doc.id)
        assert row is not None
        row.pages_key, row.page_index = outcome["pages_key"], outcome["index"]
        doc.pages_key, doc.page_index = row.pages_key, row.page_index


# ---------------------------------------------------------------- planning


def plan_job(job_id: str, settings: Settings, storage: LocalStorage,
             profile: ModelProfile) -> Outbox:
    outbox: Outbox = []
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None or job.status != "queued":
            return []
        docs = job_documents(session, job_id)
        failed = next((d for d in docs if d.status == "failed"), None)
        if failed is not None:
            fail_job(session, job, "document_failed",
                     f"document {failed.id} failed: {failed.error_code}", outbox)
            return outbox
        if any(d.status != "ready" for d in docs):
            return []  # the last document to be ready sends this task again
        job.attempts += 1
        if job.attempts > settings.task_max_attempts:
            fail_job(session, job, "planning_failed", "planning was interrupted too often", outbox)
            return outbox
    try:
        if (job.options or {}).get("pages_as_images"):
            for doc in docs:
                ensure_page_images(doc, settings, storage)
        plan = make_plan(job, docs, profile, settings, storage)
    except (PlanningError, ParseError) as exc:
        with session_scope() as session:
            job = session.get(Job, job_id)
            assert job is not None
            fail_job(session, job, exc.code, str(exc), outbox)
        return outbox
    with session_scope() as session:
        job = session.execute(select(Job).where(Job.id == job_id).with_for_update()).scalar_one()
        if job.status != "queued":
            return []
        max_cost = (job.options or {}).get("max_cost_usd")
        if max_cost is not None:
            reserved = reserved_output(settings, profile, job.options)
            estimate = estimate_cost(plan, profile, expected_output_tokens(
                check_schema(job.schema), reserved))
            if estimate > max_cost:
                fail_job(session, job, "budget_exceeded",
                         f"estimated cost ${estimate:.6f} is above max_cost_usd ${max_cost:.6f}",
                         outbox)
                return outbox
        chunk_ids = start_job(session, job, plan, [d.id for d in docs])
        outbox.extend(("longdoc.extract_chunk", chunk_id) for chunk_id in chunk_ids)
    return outbox


# ---------------------------------------------------------------- extraction


def _data_url(storage: LocalStorage, key: str, media_type: str | None) -> str:
    with storage.open(key) as fh:
        encoded = base64.b64encode(fh.read()).decode()
    return f"data:{media_type or 'image/jpeg'};base64,{encoded}"


def build_request(job: Job, parts: list[Part], docs: list[Document], storage: LocalStorage,
                  settings: Settings, profile: ModelProfile, prompt_tokens: int) -> dict[str, Any]:
    options = job.options or {}
    loader = TextLoader(storage, docs)
    detail = options.get("image_detail", "auto")
    content: list[dict[str, Any]] = []
    for part in parts:
        page = loader.pages(part.document)[part.page - 1]
        if part.kind == "image":
            if not page.image:
                raise PlanningError("page_image_missing",
                                    f"document {part.document} page {part.page} has no image")
            content.append({"type": "text",
                            "text": page_header(part.document, part.page, None, True)})
            content.append({"type": "image_url", "image_url": {
                "url": _data_url(storage, page.image, page.image_media_type), "detail": detail}})
        else:
            text = page.text[part.span[0]:part.span[1]] if part.span else page.text
            content.append({"type": "text",
                            "text": page_header(part.document, part.page, part.part) + text})
    strict = check_schema(job.schema)
    mode = options.get("mode", "json_schema")
    return {
        "model": settings.resolved_model_id,
        # Shared by every call of the job first (system prompt, schema), pages last:
        # prompt caching matches exact prefixes.
        "messages": [{"role": "system", "content": system_text(job.instructions)},
                     {"role": "user", "content": content}],
        **format_fields(strict, mode),
        "max_completion_tokens": output_tokens_for_call(settings, profile, options, prompt_tokens),
        "temperature": 0,
    }


def _answer_json(call: CallResult) -> Any:
    raw = call.tool_arguments if call.tool_arguments is not None else call.content
    if raw is None:
        raise ValueError("the answer is empty")
    return json.loads(raw)


def _record_call(session: Session, job: Job, chunk_id: str | None, call: CallResult | None,
                 predicted: int, profile: ModelProfile) -> None:
    if call is None:
        return
    cost = profile.cost_usd(call.prompt_tokens, call.cached_tokens, call.completion_tokens)
    session.add(ModelCall(
        job_id=job.id, chunk_id=chunk_id, model=call.model, status_code=200,
        finish_reason=call.finish_reason, predicted_prompt_tokens=predicted,
        prompt_tokens=call.prompt_tokens, cached_tokens=call.cached_tokens,
        completion_tokens=call.completion_tokens, cost_usd=cost,
        gateway_cost_usd=call.gateway_cost_usd, latency_ms=call.latency_ms))
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


def _lock_job(session: Session, job_id: str) -> Job:
    return session.execute(select(Job).where(Job.id == job_id).with_for_update()).scalar_one()


def _refresh_progress(session: Session, job: Job) -> int:
    """Updates the job's chunk counts; returns how many chunks are still to do."""
    counts = dict(session.execute(
        select(Chunk.status, func.count()).where(Chunk.job_id == job.id).group_by(Chunk.status)
    ).all())
    job.chunks_done = counts.get("done", 0)
    job.chunks_total = sum(n for status, n in counts.items() if status != "split")
    return counts.get("pending", 0) + counts.get("running", 0)


def _split_chunk(session: Session, job: Job, chunk: Chunk, docs: list[Document],
                 storage: LocalStorage, outbox: Outbox) -> None:
    parts = [Part.from_json(p) for p in chunk.parts]
    halves = split_in_two(parts, TextLoader(storage, docs))
    chunk.status = "split"
    for i, half in enumerate(halves):
        child = Chunk(id=new_id("chk"), job_id=job.id, ordinal=f"{chunk.ordinal}.{i:04d}",
                      parts=[p.as_json() for p in half],
                      predicted_tokens=chunk.predicted_tokens - sum(p.tokens for p in parts)
                      + sum(p.tokens for p in half))
        session.add(child)
        outbox.append(("longdoc.extract_chunk", child.id))
    session.flush()
    _refresh_progress(session, job)
    _update_plan(session, job)


def _update_plan(session: Session, job: Job) -> None:
    rows = session.scalars(select(Chunk).where(Chunk.job_id == job.id, Chunk.status != "split")
                           .order_by(Chunk.ordinal)).all()
    doc_ids = job_document_ids(session, job.id)
    chunks = [chunk_view([Part.from_json(p) for p in row.parts], row.predicted_tokens, doc_ids)
              for row in rows]
    job.plan = {**(job.plan or {}), "calls": len(chunks), "chunks": chunks}


def extract_chunk(chunk_id: str, settings: Settings, storage: LocalStorage,
                  profile: ModelProfile, client: ModelClient) -> Outbox:
    outbox: Outbox = []
    with session_scope() as session:
        chunk = session.get(Chunk, chunk_id)
        if chunk is None or chunk.status in ("done", "split"):
            return []
        job = session.get(Job, chunk.job_id)
        assert job is not None
        if job.status != "running":
            return []  # canceled or already failed: no further calls
        chunk.attempts += 1
        chunk.status = "running"
        if chunk.attempts > settings.task_max_attempts:
            fail_job(session, job, "chunk_failed",
                     f"a chunk was interrupted {chunk.attempts - 1} times", outbox)
            return outbox
        docs = job_documents(session, job.id)
        parts = [Part.from_json(p) for p in chunk.parts]
    call: CallResult | None = None
    failure: ModelCallFailed | None = None
    too_large = False
    try:
        body = build_request(job, parts, docs, storage, settings, profile, chunk.predicted_tokens)
        call = client.complete(body, prompt_tokens=chunk.predicted_tokens)
    except RequestTooLarge:
        too_large = True
    except ModelCallFailed as exc:
        failure = exc
    except PlanningError as exc:
        failure = ModelCallFailed(exc.code, str(exc))
    with session_scope() as session:
        job = _lock_job(session, chunk.job_id)
        chunk = session.get(Chunk, chunk_id)
        assert chunk is not None
        if chunk.status in ("done", "split"):
            return []  # another delivery of this task got there first
        _record_call(session, job, chunk_id, call, chunk.predicted_tokens, profile)
        if job.status != "running":
            return outbox
        if failure is not None:
            fail_job(session, job, failure.code, failure.message, outbox)
            return outbox
        if too_large or (call is not None and call.finish_reason == "length"):
            try:
                _split_chunk(session, job, chunk, docs, storage, outbox)
                log.info("job.chunk.split", job_id=job.id, chunk_id=chunk.id,
                         reason="too_large" if too_large else "length")
            except PlanningError as exc:
                fail_job(session, job, exc.code, str(exc), outbox)
            return outbox
        assert call is not None
        if call.refusal:
            fail_job(session, job, "model_refused", call.refusal, outbox)
            return outbox
        try:
            answer = _answer_json(call)
        except ValueError as exc:
            fail_job(session, job, "model_output_invalid", f"the answer is not JSON: {exc}", outbox)
            return outbox
        chunk.status, chunk.result, chunk.finish_reason = "done", {"answer": answer}, call.finish_reason
        session.flush()
        if _refresh_progress(session, job) == 0 and not job.finalizing:
            job.finalizing = True
            if job.chunks_total == 1 and (job.options or {}).get("merge") != "model":
                # The common case, one call: nothing to merge, so the job ends in this
                # transaction instead of in a task of its own.
                _store_result(session, job, merge_answers([answer], job.schema), {}, outbox)
            else:
                outbox.append(("longdoc.finalize_job", job.id))
    return outbox


# ---------------------------------------------------------------- finalize


RESOLVE_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["choices"],
    "properties": {"choices": {"type": "array", "items": {
        "type": "object", "additionalProperties": False, "required": ["path", "index"],
        "properties": {"path": {"type": "string"}, "index": {"type": "integer"}}}}},
}


def resolve_conflicts(job: Job, conflicts: list, settings: Settings, profile: ModelProfile,  # type: ignore[type-arg]
                      client: ModelClient) -> tuple[dict[str, Any], CallResult]:
    """``merge: "model"``: one small call picks a value for each conflicting field."""
    listing = "\n\n".join(
        f"path: {c.path}\n" + "\n".join(f"index {i}: {json.dumps(v, ensure_ascii=False)}"
                                         for i, v in enumerate(c.values))
        for c in conflicts)
    body = {
        "model": settings.resolved_model_id,
        "messages": [
            {"role": "system", "content": "Parts of a long document gave different values for "
             "the same field. For each field, choose the index of the value that best answers it "
             "for the whole document." + (f"\n\nInstructions:\n{job.instructions}"
                                          if job.instructions else "")},
            {"role": "user", "content": listing}],
        **format_fields(RESOLVE_SCHEMA, "json_schema"),
        "max_completion_tokens": min(4096, profile.max_output_tokens), "temperature": 0,
    }
    from service.prompt import count_request

    call = client.complete(body, prompt_tokens=count_request(body, profile))
    chosen: dict[str, Any] = {}
    by_path = {c.path: c for c in conflicts}
    for choice in json.loads(call.content or "{}").get("choices", []):
        conflict = by_path.get(choice.get("path"))
        if conflict is not None and 0 <= choice.get("index", -1) < len(conflict.values):
            chosen[conflict.path] = conflict.values[choice["index"]]
    return chosen, call


def finalize_job(job_id: str, settings: Settings, profile: ModelProfile,
                 client: ModelClient) -> Outbox:
    outbox: Outbox = []
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None or job.status != "running":
            return []
        chunks = session.scalars(select(Chunk).where(Chunk.job_id == job_id, Chunk.status == "done")
                                 .order_by(Chunk.ordinal)).all()
        answers = [c.result["answer"] for c in chunks if c.result]
    outcome = merge_answers(answers, job.schema)
    call: CallResult | None = None
    resolved: dict[str, Any] = {}
    if (job.options or {}).get("merge") == "model" and outcome.conflicts:
        try:
            resolved, call = resolve_conflicts(job, outcome.conflicts, settings, profile, client)
        except (ModelCallFailed, ValueError) as exc:
            log.warning("job.merge.model_failed", job_id=job_id, error=str(exc))
    with session_scope() as session:
        job = _lock_job(session, job_id)
        if job.status != "running" or session.get(Result, job_id) is not None:
            return []
        _record_call(session, job, None, call, 0, profile)
        _store_result(session, job, outcome, resolved, outbox)
    return outbox


def _store_result(session: Session, job: Job, outcome: MergeOutcome, resolved: dict[str, Any],
                  outbox: Outbox) -> None:
    """Validates the merged answer against the user's own schema and ends the job."""
    data = drop_optional_nulls(apply_choices(outcome.data, resolved), job.schema)
    errors = validation_errors(data, job.schema)
    if errors:
        fail_job(session, job, "model_output_invalid",
                 "the answer does not match the schema: " + "; ".join(errors), outbox)
        return
    warnings = []
    for conflict in outcome.conflicts:
        entry = conflict.as_json()
        if conflict.path in resolved:
            entry["chosen"], entry["resolved_by"] = resolved[conflict.path], "model"
        warnings.append(entry)
    session.add(Result(job_id=job.id, data=data, warnings=warnings))
    _finish_job(session, job, "succeeded", outbox)
    log.info("job.succeeded", job_id=job.id, cost_usd=job.cost_usd)


# ---------------------------------------------------------------- webhooks


def _jittered(seconds: float) -> float:
    return seconds * random.uniform(0.9, 1.1)


def deliver_webhook(delivery_id: str, settings: Settings, sender: WebhookSender) -> Outbox:
    outbox: Outbox = []
    lease = timedelta(seconds=settings.webhook_timeout_s + 30)
    with session_scope() as session:
        # Claim the delivery: only one worker sends an attempt, however the task arrived.
        now = utcnow()
        claimed = session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == "pending",
                   WebhookDelivery.next_attempt_at <= now)
            .values(next_attempt_at=now + lease)).rowcount
        if not claimed:
            return []
        delivery = session.get(WebhookDelivery, delivery_id)
        tenant = session.get(Tenant, delivery.tenant_id) if delivery else None
        assert delivery is not None and tenant is not None
        url, payload, secret = delivery.url, delivery.payload, tenant.webhook_secret
    sent_at = utcnow()
    outcome = sender.send(url, signed_headers(secret, delivery_id, sent_at, payload), payload)
    with session_scope() as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        assert delivery is not None
        session.add(WebhookAttempt(delivery_id=delivery_id, attempted_at=sent_at,
                                   status_code=outcome.status_code, error=outcome.error,
                                   duration_ms=outcome.duration_ms))
        delivery.attempts += 1
        delivery.last_status_code = outcome.status_code
        code = outcome.status_code or 0
        if 200 <= code < 300:
            delivery.status, delivery.next_attempt_at = "delivered", None
        elif code == 410:
            delivery.status, delivery.next_attempt_at = "disabled", None  # the receiver said stop
        elif delivery.attempts >= len(settings.webhook_retry_schedule):
            delivery.status, delivery.next_attempt_at = "failed", None
        else:
            delay = _jittered(settings.webhook_retry_schedule[delivery.attempts])
            delivery.next_attempt_at = utcnow() + timedelta(seconds=delay)
            # Short waits ride on a countdown (kept well inside the broker's visibility timeout);
            # longer ones are found by the beat sweep.
            if delay <= min(60, settings.visibility_timeout_s / 2):
                outbox.append(("longdoc.deliver_webhook", delivery_id, delay))
        log.info("webhook.attempt", delivery_id=delivery_id, status_code=outcome.status_code,
                 error=outcome.error, attempts=delivery.attempts, state=delivery.status)
    return outbox


def due_deliveries(limit: int = 500) -> list[str]:
    with session_scope() as session:
        return list(session.scalars(
            select(WebhookDelivery.id)
            .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= utcnow())
            .order_by(WebhookDelivery.next_attempt_at).limit(limit)))
