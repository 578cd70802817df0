"""Extraction: one model call per chunk. A worker claims the chunk, records the call before it
leaves, calls the model, and stores the answer — or splits the chunk when it was too large or
its answer was cut off, or makes it wait when the model is down. The last chunk to finish sends
the job to finalize; every chunk that ends frees a dispatch slot for the next."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from schemas.errors import ErrorCode
from schemas.strict import check_schema
from schemas.tasks import Task
from service.core.jobs import TextLoader, chunk_view, output_tokens_for_call
from service.core.logs import log
from service.core.merge import merge_answers
from service.core.pages import PageKind
from service.core.planner import Part, PlanningError, split_in_two
from service.core.prompt import format_fields, page_header, system_text
from service.store.db import UnitOfWork
from service.store.dispatch import dispatch
from service.store.jobs import document_pages, job_document_ids, job_documents, lock_job
from service.store.leases import claim, holds, release
from service.store.models import (
    Chunk,
    ChunkStatus,
    Document,
    Job,
    JobStatus,
    ModelCall,
    new_id,
    utcnow,
)
from service.store.storage import BlobStore
from workers.context import WorkerContext
from workers.model_client import CallResult, ModelCallFailed, RequestTooLarge
from workers.stages.common import fail_job, open_call, settle_call
from workers.stages.finalize import PreparedResult, prepare_result, store_result


def _data_url(storage: BlobStore, key: str, media_type: str | None) -> str:
    with storage.open(key) as fh:
        encoded = base64.b64encode(fh.read()).decode()
    return f"data:{media_type or 'image/jpeg'};base64,{encoded}"


def build_request(ctx: WorkerContext, job: Job, parts: list[Part], docs: list[Document],
                  prompt_tokens: int) -> dict[str, Any]:
    options = job.options or {}
    loader = TextLoader(ctx.storage, [document_pages(d) for d in docs])
    detail = options.get("image_detail", "auto")
    content: list[dict[str, Any]] = []
    for part in parts:
        page = loader.pages(part.document)[part.page - 1]
        if part.kind == PageKind.IMAGE:
            if not page.image:
                raise PlanningError(ErrorCode.PAGE_IMAGE_MISSING,
                                    f"document {part.document} page {part.page} has no image")
            content.append({"type": "text",
                            "text": page_header(part.document, part.page, None, True)})
            content.append({"type": "image_url", "image_url": {
                "url": _data_url(ctx.storage, page.image, page.image_media_type), "detail": detail}})
        else:
            text = page.text[part.span[0]:part.span[1]] if part.span else page.text
            content.append({"type": "text",
                            "text": page_header(part.document, part.page, part.part) + text})
    strict = check_schema(job.schema)
    mode = options.get("mode", "json_schema")
    return {
        "model": ctx.settings.resolved_model_id,
        # Shared by every call of the job first (system prompt, schema), pages last:
        # prompt caching matches exact prefixes.
        "messages": [{"role": "system", "content": system_text(job.instructions)},
                     {"role": "user", "content": content}],
        **format_fields(strict, mode),
        "max_completion_tokens": output_tokens_for_call(ctx.settings, ctx.profile, options,
                                                        prompt_tokens),
        "temperature": 0,
    }


def answer_json(call: CallResult) -> Any:
    raw = call.tool_arguments if call.tool_arguments is not None else call.content
    if raw is None:
        raise ValueError("the answer is empty")
    return json.loads(raw)


def refresh_progress(session: Session, job: Job) -> int:
    """Updates the job's chunk counts; returns how many chunks are still to do."""
    counts: dict[str, int] = {status: n for status, n in session.execute(
        select(Chunk.status, func.count()).where(Chunk.job_id == job.id).group_by(Chunk.status))}
    job.chunks_done = counts.get(ChunkStatus.DONE, 0)
    job.chunks_total = sum(n for status, n in counts.items() if status != ChunkStatus.SPLIT)
    return sum(counts.get(status, 0) for status in (
        ChunkStatus.PENDING, ChunkStatus.DISPATCHED, ChunkStatus.RUNNING))


def split_chunk(ctx: WorkerContext, uow: UnitOfWork, job: Job, chunk: Chunk,
                docs: list[Document]) -> None:
    parts = [Part.from_json(p) for p in chunk.parts]
    halves = split_in_two(parts, TextLoader(ctx.storage, [document_pages(d) for d in docs]))
    chunk.status = ChunkStatus.SPLIT
    for i, half in enumerate(halves):
        # Pending, and dispatched like any other chunk (before later chunks: same creation time).
        uow.session.add(Chunk(id=new_id("chk"), job_id=job.id, tenant_id=job.tenant_id,
                              ordinal=f"{chunk.ordinal}.{i:04d}", parts=[p.as_json() for p in half],
                              predicted_tokens=chunk.predicted_tokens - sum(p.tokens for p in parts)
                              + sum(p.tokens for p in half), created_at=chunk.created_at))
    uow.session.flush()
    refresh_progress(uow.session, job)
    update_plan(uow.session, job)


def update_plan(session: Session, job: Job) -> None:
    rows = session.scalars(select(Chunk).where(Chunk.job_id == job.id, Chunk.status != ChunkStatus.SPLIT)
                           .order_by(Chunk.ordinal)).all()
    doc_ids = job_document_ids(session, job.id)
    chunks = [chunk_view([Part.from_json(p) for p in row.parts], row.predicted_tokens, doc_ids)
              for row in rows]
    job.plan = {**(job.plan or {}), "calls": len(chunks), "chunks": chunks}


# Failures that mean "the model is not answering right now": the chunk waits and tries again.
OUTAGE = {ErrorCode.MODEL_UNAVAILABLE, ErrorCode.RATE_LIMITED}


def outage_delay(elapsed_s: float) -> float:
    """Growing waits while the model stays unavailable: 5 s, then about the time waited so far
    (5, 10, 20, 40, ...), at most two minutes."""
    return min(120.0, max(5.0, elapsed_s))


def extract_chunk(ctx: WorkerContext, chunk_id: str) -> None:
    settings = ctx.settings
    with ctx.unit_of_work() as uow:
        chunk = uow.session.get(Chunk, chunk_id)
        if chunk is None:
            return
        job = uow.session.get(Job, chunk.job_id)
        assert job is not None
        if chunk.status in (ChunkStatus.DONE, ChunkStatus.SPLIT):
            finish_if_done(uow, job)  # a redelivered task: what follows is sent again
            return
        if job.status != JobStatus.RUNNING:
            return  # canceled or already failed: no further calls
        if chunk.attempts >= settings.task_max_attempts:
            fail_job(uow, job, ErrorCode.CHUNK_FAILED,
                     f"a chunk was interrupted {chunk.attempts} times")
            return
        now = utcnow()
        if not claim(uow.session, Chunk, chunk_id, [ChunkStatus.DISPATCHED, ChunkStatus.PENDING],
                     settings.lease_s, now, status=ChunkStatus.RUNNING,
                     extra=[or_(Chunk.not_before.is_(None), Chunk.not_before <= now)]):
            return  # held by another worker, or waiting out a model outage
        docs = job_documents(uow.session, job.id)
        parts = [Part.from_json(p) for p in chunk.parts]
        # The common case, one call: nothing to merge, so the job can end in the transaction
        # that records the answer (validated before it opens).
        single = job.chunks_total == 1 and (job.options or {}).get("merge") != "model"
        call_id = open_call(uow, job, chunk_id, chunk.predicted_tokens).id
    ctx.keep_leases()
    call: CallResult | None = None
    failure: ModelCallFailed | None = None
    too_large = False
    try:
        body = build_request(ctx, job, parts, docs, chunk.predicted_tokens)
        call = ctx.client.complete(body, prompt_tokens=chunk.predicted_tokens)
    except RequestTooLarge as exc:
        too_large, failure = True, exc
    except ModelCallFailed as exc:
        failure = exc
    except PlanningError as exc:
        failure = ModelCallFailed(exc.code, exc.message)
    answer: Any = None
    invalid: str | None = None
    prepared: PreparedResult | None = None
    if call is not None and call.finish_reason != "length" and not call.refusal:
        try:
            answer = answer_json(call)
            if single:
                prepared = prepare_result(job.schema, merge_answers([answer], job.schema), {})
        except ValueError as exc:
            invalid = f"the answer is not JSON: {exc}"
    with ctx.unit_of_work() as uow:
        job = lock_job(uow.session, chunk.job_id)
        chunk = uow.session.get(Chunk, chunk_id)
        row = uow.session.get(ModelCall, call_id)
        assert chunk is not None and row is not None
        # On the books whatever happens to the chunk: the endpoint answered (or not).
        settle_call(uow.session, job, row, call, failure.message if failure else None, ctx.profile)
        if chunk.status != ChunkStatus.RUNNING or not holds(chunk):
            return  # taken over by another worker (this one was presumed dead): not applied
        release(chunk)
        if job.status != JobStatus.RUNNING:
            chunk.status = ChunkStatus.PENDING
            return
        if failure is not None and failure.code in OUTAGE and not too_large:
            wait_for_model(ctx, uow, job, chunk, failure)
            return
        if failure is not None and not too_large:
            fail_job(uow, job, failure.code, failure.message)
            return
        chunk.outage_since = None
        job.waiting_reason = job.waiting_since = None
        if too_large or (call is not None and call.finish_reason == "length"):
            try:
                split_chunk(ctx, uow, job, chunk, docs)
                log.info("job.chunk.split", job_id=job.id, chunk_id=chunk.id,
                         reason="too_large" if too_large else "length")
            except PlanningError as exc:
                fail_job(uow, job, exc.code, exc.message)
            return
        assert call is not None
        if call.refusal:
            fail_job(uow, job, ErrorCode.MODEL_REFUSED, call.refusal)
            return
        if invalid is not None:
            fail_job(uow, job, ErrorCode.MODEL_OUTPUT_INVALID, invalid)
            return
        chunk.status, chunk.result = ChunkStatus.DONE, {"answer": answer}
        chunk.finish_reason = call.finish_reason
        uow.session.flush()
        if refresh_progress(uow.session, job) == 0 and not job.finalizing:
            job.finalizing = True
            if job.chunks_total == 1 and prepared is not None:
                store_result(uow, job, prepared, settings)
            else:
                job.dispatched_at = utcnow()
                uow.send(Task.FINALIZE_JOB, job.id)
    with ctx.unit_of_work() as uow:
        dispatch(uow, settings.dispatch_window)  # the slot this chunk held goes to the next


def wait_for_model(ctx: WorkerContext, uow: UnitOfWork, job: Job, chunk: Chunk,
                   failure: ModelCallFailed) -> None:
    """The model is down or out of capacity: the chunk waits and tries again later, for up to
    ``LONGDOC_MODEL_OUTAGE_S`` since its first failure, and the job says it is waiting."""
    now = utcnow()
    since = chunk.outage_since or now
    waited = (now - since).total_seconds()
    if waited >= ctx.settings.model_outage_s:
        fail_job(uow, job, failure.code, f"{failure.message}; the model has not answered for "
                 f"{waited:.0f} s (LONGDOC_MODEL_OUTAGE_S)")
        return
    delay = outage_delay(waited)
    chunk.status, chunk.outage_since = ChunkStatus.PENDING, since
    chunk.not_before = now + timedelta(seconds=delay)
    job.waiting_reason = failure.code
    job.waiting_since = job.waiting_since or now
    log.info("job.chunk.waiting_for_model", job_id=job.id, chunk_id=chunk.id,
             code=failure.code, retry_in_s=delay)


def finish_if_done(uow: UnitOfWork, job: Job) -> None:
    """Every chunk done but the job not finalized (a lost message): sent again."""
    if job.status == JobStatus.RUNNING and job.finalizing:
        job.dispatched_at = utcnow()
        uow.send(Task.FINALIZE_JOB, job.id)
