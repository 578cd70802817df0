"""Extraction: one model call per chunk. The answer is stored, or the chunk is split when it was
too large or its answer was cut off; the last chunk to finish sends the job to finalize."""

from __future__ import annotations

import base64
import json
from typing import Any

from sqlalchemy import func, select
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
from service.store.jobs import document_pages, job_document_ids, job_documents, lock_job
from service.store.models import Chunk, ChunkStatus, Document, Job, JobStatus, new_id
from service.store.storage import BlobStore
from workers.context import WorkerContext
from workers.model_client import CallResult, ModelCallFailed, RequestTooLarge
from workers.stages.common import fail_job, record_call
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
    return counts.get(ChunkStatus.PENDING, 0) + counts.get(ChunkStatus.RUNNING, 0)


def split_chunk(ctx: WorkerContext, uow: UnitOfWork, job: Job, chunk: Chunk,
                docs: list[Document]) -> None:
    parts = [Part.from_json(p) for p in chunk.parts]
    halves = split_in_two(parts, TextLoader(ctx.storage, [document_pages(d) for d in docs]))
    chunk.status = ChunkStatus.SPLIT
    for i, half in enumerate(halves):
        child = Chunk(id=new_id("chk"), job_id=job.id, ordinal=f"{chunk.ordinal}.{i:04d}",
                      parts=[p.as_json() for p in half],
                      predicted_tokens=chunk.predicted_tokens - sum(p.tokens for p in parts)
                      + sum(p.tokens for p in half))
        uow.session.add(child)
        uow.send(Task.EXTRACT_CHUNK, child.id)
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


def extract_chunk(ctx: WorkerContext, chunk_id: str) -> None:
    with ctx.unit_of_work() as uow:
        chunk = uow.session.get(Chunk, chunk_id)
        if chunk is None or chunk.status in (ChunkStatus.DONE, ChunkStatus.SPLIT):
            return
        job = uow.session.get(Job, chunk.job_id)
        assert job is not None
        if job.status != JobStatus.RUNNING:
            return  # canceled or already failed: no further calls
        chunk.attempts += 1
        chunk.status = ChunkStatus.RUNNING
        if chunk.attempts > ctx.settings.task_max_attempts:
            fail_job(uow, job, ErrorCode.CHUNK_FAILED,
                     f"a chunk was interrupted {chunk.attempts - 1} times")
            return
        docs = job_documents(uow.session, job.id)
        parts = [Part.from_json(p) for p in chunk.parts]
        # The common case, one call: nothing to merge, so the job can end in the transaction
        # that records the answer (validated before it opens).
        single = job.chunks_total == 1 and (job.options or {}).get("merge") != "model"
    call: CallResult | None = None
    failure: ModelCallFailed | None = None
    too_large = False
    try:
        body = build_request(ctx, job, parts, docs, chunk.predicted_tokens)
        call = ctx.client.complete(body, prompt_tokens=chunk.predicted_tokens)
    except RequestTooLarge:
        too_large = True
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
        assert chunk is not None
        if chunk.status in (ChunkStatus.DONE, ChunkStatus.SPLIT):
            return  # another delivery of this task got there first
        row = record_call(job, chunk_id, call, chunk.predicted_tokens, ctx.profile)
        if row is not None:
            uow.session.add(row)
        if job.status != JobStatus.RUNNING:
            return
        if failure is not None:
            fail_job(uow, job, failure.code, failure.message)
            return
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
                store_result(uow, job, prepared)
            else:
                uow.send(Task.FINALIZE_JOB, job.id)
