"""Extraction: one model call per chunk. A worker claims the chunk, records the call before it
leaves, calls the model, and stores the answer — or splits the chunk when it was too large, or
makes it wait when the model is down. An answer cut off at the output cap is kept (its complete
items) and the pages after its last settled item are planned again, with the density the job's
answers have shown; the job's first answer also releases the chunks held for it. The last chunk
to finish sends the job to finalize; every chunk that ends frees a dispatch slot for the next."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from schemas.errors import ErrorCode
from schemas.strict import check_schema
from schemas.tasks import Task
from service.core.answers import (
    Answer,
    ChunkText,
    covered_tokens,
    locate_items,
    read_answer,
    resume_part,
)
from service.core.jobs import (
    TextLoader,
    chunk_view,
    job_answer_size,
    output_tokens_for_call,
    wire_schema,
)
from service.core.logs import log
from service.core.pages import PageKind
from service.core.planner import Limits, Part, PlanningError, replan, split_in_two
from service.core.profiles import request_options
from service.core.prompt import format_fields, page_header, system_text
from service.core.sizing import (
    AnswerSize,
    citation_factor,
    lower_bound_calls,
    observed_ratio,
)
from service.store.db import UnitOfWork
from service.store.dispatch import cancel_chunks, dispatch
from service.store.jobs import (
    document_pages,
    job_document_ids,
    job_documents,
    job_spec,
    lock_job,
)
from service.store.leases import claim, holds, release
from service.store.models import (
    Chunk,
    ChunkStatus,
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
from workers.stages.finalize import (
    PreparedResult,
    chunk_answer,
    job_page_texts,
    prepare_result,
    store_result,
)


def _data_url(storage: BlobStore, key: str, media_type: str | None) -> str:
    with storage.open(key) as fh:
        encoded = base64.b64encode(fh.read()).decode()
    return f"data:{media_type or 'image/jpeg'};base64,{encoded}"


def part_text(loader: TextLoader, part: Part) -> str | None:
    """The text of a part as the model reads it (None: an image)."""
    if part.kind == PageKind.IMAGE:
        return None
    text = loader.pages(part.document)[part.page - 1].text
    return text[part.span[0]:part.span[1]] if part.span else text


def answer_size_now(job: Job) -> AnswerSize:
    """How long answers are expected to be: the schema's bound, or what the job has learned."""
    plan = (job.plan or {}).get("answer")
    if plan:
        return AnswerSize(plan["fixed_tokens"], plan["ratio"])
    return job_answer_size(job_spec(job))


def build_request(ctx: WorkerContext, job: Job, parts: list[Part], loader: TextLoader,
                  prompt_tokens: int) -> dict[str, Any]:
    options = job.options or {}
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
            content.append({"type": "text", "text": page_header(part.document, part.page, part.part)
                            + (part_text(loader, part) or "")})
    mode = options.get("mode", "json_schema")
    expected = answer_size_now(job).tokens(sum(p.tokens for p in parts))
    return {
        "model": ctx.settings.resolved_model_id,
        # Shared by every call of the job first (system prompt, schema), pages last:
        # prompt caching matches exact prefixes.
        "messages": [{"role": "system",
                      "content": system_text(job.instructions, bool(options.get("citations")))},
                     {"role": "user", "content": content}],
        **format_fields(wire_schema(job_spec(job)), mode),
        "max_completion_tokens": output_tokens_for_call(ctx.settings, ctx.profile, options,
                                                        prompt_tokens, expected),
        **request_options(ctx.profile, mode),
    }


@dataclass
class Reading:
    """One call's answer, read: what it holds whole, where its items are printed, where a cut
    answer's job goes on from, and what it showed of the answers' density."""

    answer: Answer
    located: dict[str, list[tuple[int, int] | None]]
    resume: int | None  # the part to continue from (None: the answer is whole)
    produced: int  # answer tokens, sources included
    covered: int  # page tokens they came from

    def stored(self) -> dict[str, Any]:
        return {"answer": self.answer.data, "sources": self.answer.sources,
                "complete": self.answer.complete,
                "located": {k: [list(v) if v else None for v in locs]
                            for k, locs in self.located.items()}}


def read_call(job: Job, parts: list[Part], loader: TextLoader, call: CallResult) -> Reading:
    """Reads an answer outside any transaction (ValueError: a whole answer that is not JSON)."""
    cited = bool((job.options or {}).get("citations"))
    cut = call.finish_reason == "length"
    raw = call.tool_arguments if call.tool_arguments is not None else call.content
    answer = read_answer(raw, cut, cited)
    keys = [(p.document, p.page) for p in parts]
    where = locate_items(answer.data, ChunkText(keys, [part_text(loader, p) for p in parts]))
    located = {pointer: [keys[i] if i is not None else None for i in found]
               for pointer, found in where.items()}
    tokens = [p.tokens for p in parts]
    if not cut:
        return Reading(answer, located, None, call.completion_tokens, sum(tokens))
    resume = resume_part(answer, where, cited)
    produced = call.completion_tokens
    if cited and answer.sources is None:
        # Cut before any source: what was read out will cost that much more with its sources.
        produced = round(produced * citation_factor(check_schema(job.schema)))
    return Reading(answer, located, resume, produced, covered_tokens(tokens, resume))


def learn(job: Job, reading: Reading) -> None:
    """Adds what an answer showed to the job's answer density (over every answer so far)."""
    plan = dict(job.plan or {})
    answer = plan.get("answer")
    if not answer:
        return
    answer = dict(answer)
    answer["observed_answer"] = answer.get("observed_answer", 0) + reading.produced
    answer["observed_pages"] = answer.get("observed_pages", 0) + reading.covered
    answer["answers"] = answer.get("answers", 0) + 1
    answer["ratio"] = round(observed_ratio(answer["observed_answer"], answer["observed_pages"],
                                           answer["fixed_tokens"], answer["answers"]), 6)
    answer["ratio_learned"] = True
    pages = answer.get("page_tokens", 0)
    answer["estimated_tokens"] = answer["fixed_tokens"] + round(answer["ratio"] * pages)
    answer["lower_bound_calls"] = lower_bound_calls(
        pages, plan.get("budget_tokens", 1), answer["estimated_tokens"], answer["usable_per_call"])
    plan["answer"] = answer
    job.plan = plan


def _limits(job: Job) -> Limits:
    plan = job.plan or {}
    answer = plan.get("answer")
    if not answer:
        return Limits(plan.get("budget_tokens") or 1)
    return Limits(plan["budget_tokens"], AnswerSize(answer["fixed_tokens"], answer["ratio"]),
                  answer["usable_per_call"])


def _add_chunks(uow: UnitOfWork, job: Job, base: Chunk, groups: list[list[Part]],
                overhead: int) -> None:
    for i, group in enumerate(groups):
        # Pending, and dispatched like any other chunk (in page order, before later chunks:
        # same creation time, an ordinal that sorts right after the one they continue).
        uow.session.add(Chunk(id=new_id("chk"), job_id=job.id, tenant_id=job.tenant_id,
                              ordinal=f"{base.ordinal}.{i:04d}",
                              parts=[p.as_json() for p in group],
                              predicted_tokens=overhead + sum(p.tokens for p in group),
                              created_at=base.created_at))


def plan_rest(uow: UnitOfWork, job: Job, chunk: Chunk, rest: list[Part],
              loader: TextLoader) -> None:
    """The pages still to read after a cut answer (``rest``) and the chunks held for the job's
    first answer, cut again so that each answer fits, as far as the job's answers tell."""
    held = list(uow.session.scalars(select(Chunk).where(
        Chunk.job_id == job.id, Chunk.status == ChunkStatus.HELD).order_by(Chunk.ordinal)))
    parts = [Part.from_json(p) for p in chunk.parts]
    overhead = chunk.predicted_tokens - sum(p.tokens for p in parts)
    limits = _limits(job)
    if not rest:
        if all(limits.fits(h.predicted_tokens - overhead) for h in held):
            for row in held:
                row.status = ChunkStatus.PENDING  # they fit as they are
            return
        if not held:
            return
    pages = rest + [Part.from_json(p) for row in held for p in row.parts]
    again = rest if rest == parts else []
    groups = replan(pages, limits, loader, again)
    for row in held:
        row.status = ChunkStatus.SPLIT
    _add_chunks(uow, job, chunk if rest else held[0], groups, overhead)
    log.info("job.chunk.replanned", job_id=job.id, chunk_id=chunk.id, chunks=len(groups),
             held=len(held), continued=bool(rest))


def refresh_progress(session: Session, job: Job) -> int:
    """Updates the job's chunk counts; returns how many chunks are still to do."""
    counts: dict[str, int] = {status: n for status, n in session.execute(
        select(Chunk.status, func.count()).where(Chunk.job_id == job.id).group_by(Chunk.status))}
    job.chunks_done = counts.get(ChunkStatus.DONE, 0)
    job.chunks_total = sum(n for status, n in counts.items() if status != ChunkStatus.SPLIT)
    return sum(counts.get(status, 0) for status in (
        ChunkStatus.PENDING, ChunkStatus.DISPATCHED, ChunkStatus.RUNNING, ChunkStatus.HELD))


def split_chunk(uow: UnitOfWork, job: Job, chunk: Chunk, loader: TextLoader) -> None:
    """A request the model refused as too large: halved, both halves sent."""
    parts = [Part.from_json(p) for p in chunk.parts]
    halves = split_in_two(parts, loader)
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


# A chunk taken back from a worker presumed dead is open until someone finishes it.
STILL_OPEN = (ChunkStatus.PENDING, ChunkStatus.DISPATCHED, ChunkStatus.RUNNING)


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
            # Canceled or already failed: no further calls, and its slot goes to the next.
            cancel_chunks(uow.session, job.id)
            dispatch(uow, settings.dispatch_window)
            return
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
        document_ids = [d.id for d in docs]
        parts = [Part.from_json(p) for p in chunk.parts]
        # The common case, one call: nothing to merge, so the job can end in the transaction
        # that records the answer (validated before it opens).
        single = job.chunks_total == 1 and (job.options or {}).get("merge") != "model"
        call_id = open_call(uow, job, chunk_id, chunk.predicted_tokens).id
    ctx.keep_leases()
    loader = TextLoader(ctx.storage, [document_pages(d) for d in docs])
    call: CallResult | None = None
    failure: ModelCallFailed | None = None
    too_large = False
    try:
        body = build_request(ctx, job, parts, loader, chunk.predicted_tokens)
        call = ctx.client.complete(body, prompt_tokens=chunk.predicted_tokens)
    except RequestTooLarge as exc:
        too_large, failure = True, exc
    except ModelCallFailed as exc:
        failure = exc
    except PlanningError as exc:
        failure = ModelCallFailed(exc.code, exc.message)
    reading: Reading | None = None
    invalid: str | None = None
    prepared: PreparedResult | None = None
    if call is not None and not call.refusal:
        try:
            reading = read_call(job, parts, loader, call)
            if single and reading.resume is None:
                answer = chunk_answer(parts, reading.stored())
                prepared = prepare_result(job, [answer], {}, job_page_texts(loader, [parts]),
                                          document_ids)
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
            # This worker was presumed dead (its lease ran out) and the chunk was sent again.
            # A paid answer is still used while nobody has finished the chunk; a call sent again
            # meanwhile then finds it done. Anything else is the new holder's to decide.
            if not (chunk.status in STILL_OPEN and job.status == JobStatus.RUNNING
                    and reading is not None):
                return
            log.info("job.chunk.late_answer", job_id=job.id, chunk_id=chunk.id)
        release(chunk)
        if job.status != JobStatus.RUNNING:
            chunk.status = ChunkStatus.CANCELED
            dispatch(uow, settings.dispatch_window)
            return
        if failure is not None and failure.code in OUTAGE and not too_large:
            wait_for_model(ctx, uow, job, chunk, failure)
            return
        if failure is not None and not too_large:
            fail_job(uow, job, failure.code, failure.message)
            return
        chunk.outage_since = None
        job.waiting_reason = job.waiting_since = None
        if too_large:
            try:
                split_chunk(uow, job, chunk, loader)
                log.info("job.chunk.split", job_id=job.id, chunk_id=chunk.id, reason="too_large")
            except PlanningError as exc:
                fail_job(uow, job, exc.code, exc.message)
            return
        assert call is not None
        row.answer_used = False
        if call.refusal:
            # Our words, not the model's: its refusal was written after reading the document.
            fail_job(uow, job, ErrorCode.MODEL_REFUSED,
                     "the model refused to extract from these pages")
            return
        if invalid is not None or reading is None:
            fail_job(uow, job, ErrorCode.MODEL_OUTPUT_INVALID, invalid or "no answer")
            return
        record(uow, job, chunk, row, call, reading, parts, loader)
        if job.status != JobStatus.RUNNING:
            return  # a continuation that cannot be planned failed the job
        if refresh_progress(uow.session, job) == 0 and not job.finalizing:
            job.finalizing = True
            if job.chunks_total == 1 and prepared is not None:
                store_result(uow, job, prepared, settings)
            else:
                job.dispatched_at = utcnow()
                uow.send(Task.FINALIZE_JOB, job.id)
    with ctx.unit_of_work() as uow:
        dispatch(uow, settings.dispatch_window)  # the slot this chunk held goes to the next


def record(uow: UnitOfWork, job: Job, chunk: Chunk, row: ModelCall, call: CallResult,
           reading: Reading, parts: list[Part], loader: TextLoader) -> None:
    """Stores an answer on its chunk (a cut one too: its complete items are used), learns from
    it, and plans what is left: the rest of a cut chunk, the chunks held for a first answer."""
    chunk.status, chunk.result = ChunkStatus.DONE, reading.stored()
    chunk.finish_reason = call.finish_reason
    row.answer_used, row.answer_items = True, reading.answer.items
    learn(job, reading)
    rest = parts[reading.resume:] if reading.resume is not None else []
    if rest:
        log.info("job.chunk.continued", job_id=job.id, chunk_id=chunk.id,
                 items=reading.answer.items, from_part=reading.resume)
    try:
        plan_rest(uow, job, chunk, rest, loader)
    except PlanningError as exc:
        fail_job(uow, job, exc.code, exc.message)
        return
    uow.session.flush()
    refresh_progress(uow.session, job)
    update_plan(uow.session, job)


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
