"""Finalize: merge the chunks' answers in page order (an item two calls read is kept once;
``merge: "model"`` asks the model to pick between conflicting values), verify every source's
quote against the stored text of its page, validate against the user's own schema, store, end
the job."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from schemas.errors import ErrorCode
from schemas.strict import drop_optional_nulls, validation_budget, validation_errors
from service.core.citations import PageTexts, ground
from service.core.jobs import TextLoader
from service.core.logs import log
from service.core.merge import (
    ChunkAnswer,
    Conflict,
    MergeOutcome,
    apply_choices,
    merge_answers,
    supported_sources,
)
from service.core.pages import PageKind
from service.core.planner import Part
from service.core.profiles import request_options
from service.core.prompt import count_request, format_fields
from service.core.settings import Settings
from service.store.db import UnitOfWork
from service.store.jobs import document_pages, job_documents, lock_job
from service.store.leases import claim, holds, release
from service.store.models import Chunk, ChunkStatus, Job, JobStatus, ModelCall, Result
from workers.context import WorkerContext
from workers.model_client import CallResult, ModelCallFailed
from workers.stages.common import fail_job, finish_job, open_call, settle_call

RESOLVE_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["choices"],
    "properties": {"choices": {"type": "array", "items": {
        "type": "object", "additionalProperties": False, "required": ["path", "index"],
        "properties": {"path": {"type": "string"}, "index": {"type": "integer"}}}}},
}


def conflicts_request(ctx: WorkerContext, job: Job, conflicts: list[Conflict]) -> dict[str, Any]:
    """``merge: "model"``: one small call picks a value for each conflicting field."""
    listing = "\n\n".join(
        f"path: {c.path}\n" + "\n".join(f"index {i}: {json.dumps(v, ensure_ascii=False)}"
                                         for i, v in enumerate(c.values))
        for c in conflicts)
    return {
        "model": ctx.settings.resolved_model_id,
        "messages": [
            {"role": "system", "content": "Parts of a long document gave different values for "
             "the same field. For each field, choose the index of the value that best answers it "
             "for the whole document." + (f"\n\nInstructions:\n{job.instructions}"
                                          if job.instructions else "")},
            {"role": "user", "content": listing}],
        **format_fields(RESOLVE_SCHEMA, "json_schema"),
        "max_completion_tokens": min(4096, ctx.profile.max_output_tokens),
        **request_options(ctx.profile, "json_schema"),
    }


def chosen_values(call: CallResult, conflicts: list[Conflict]) -> dict[str, Any]:
    chosen: dict[str, Any] = {}
    by_path = {c.path: c for c in conflicts}
    for choice in json.loads(call.content or "{}").get("choices", []):
        conflict = by_path.get(choice.get("path"))
        if conflict is not None and 0 <= choice.get("index", -1) < len(conflict.values):
            chosen[conflict.path] = conflict.values[choice["index"]]
    return chosen


def finalize_job(ctx: WorkerContext, job_id: str) -> None:
    settings = ctx.settings
    with ctx.unit_of_work() as uow:
        job = uow.session.get(Job, job_id)
        if job is None or job.status != JobStatus.RUNNING or not job.finalizing:
            return
        if not claim(uow.session, Job, job_id, [JobStatus.RUNNING], settings.lease_s):
            return
        chunks = uow.session.scalars(
            select(Chunk).where(Chunk.job_id == job_id, Chunk.status == ChunkStatus.DONE)
            .order_by(Chunk.ordinal)).all()
        answered = [(c, c.result) for c in chunks if c.result]
        read = [[Part.from_json(p) for p in c.parts] for c, _ in answered]
        answers = [chunk_answer(parts, stored) for parts, (_, stored) in zip(read, answered,
                                                                             strict=True)]
        docs = job_documents(uow.session, job_id)
        outcome = merge_answers(answers, job.schema)
        body: dict[str, Any] | None = None
        call_id: int | None = None
        if (job.options or {}).get("merge") == "model" and outcome.conflicts:
            body = conflicts_request(ctx, job, outcome.conflicts)
            predicted = count_request(body, ctx.profile)
            call_id = open_call(uow, job, None, predicted, purpose="merge").id
    ctx.keep_leases()
    call: CallResult | None = None
    error: str | None = None
    resolved: dict[str, Any] = {}
    if body is not None:
        try:
            call = ctx.client.complete(body, prompt_tokens=predicted)
            resolved = chosen_values(call, outcome.conflicts)
        except (ModelCallFailed, ValueError) as exc:
            error = str(exc)
            log.warning("job.merge.model_failed", job_id=job_id, error=type(exc).__name__)
    loader = TextLoader(ctx.storage, [document_pages(d) for d in docs])
    prepared = prepare_result(job, outcome, resolved, job_page_texts(loader, read),
                              [d.id for d in docs])
    with ctx.unit_of_work() as uow:
        job = lock_job(uow.session, job_id)
        if call_id is not None:
            row = uow.session.get(ModelCall, call_id)
            assert row is not None
            settle_call(uow.session, job, row, call, error, ctx.profile)
        if job.status != JobStatus.RUNNING or not holds(job):
            if holds(job):
                release(job)  # canceled meanwhile: not renewed forever (the purge waits for it)
            return
        release(job)
        if uow.session.get(Result, job_id) is None:
            store_result(uow, job, prepared, settings)


def chunk_answer(parts: list[Part], stored: dict[str, Any]) -> ChunkAnswer:
    """A stored chunk answer as the merge reads it (rows stored before sources had only
    ``answer``)."""
    keys = [(p.document, p.page) for p in parts]
    located = {pointer: [(loc[0], loc[1]) if loc else None for loc in locs]
               for pointer, locs in (stored.get("located") or {}).items()}
    return ChunkAnswer(stored.get("answer"), stored.get("sources"), located, frozenset(keys),
                       keys[0] if keys else None, keys[-1] if keys else None)


def job_page_texts(loader: TextLoader, read: list[list[Part]]) -> PageTexts:
    """The text of every page the job read, for checking quotes: pages read as images have
    none (their sources are neither verified nor refuted), pages not read refute any quote."""
    kinds = {(p.document, p.page): p.kind for parts in read for p in parts}

    def load(document: int, page: int) -> str | None:
        if kinds.get((document, page)) == PageKind.IMAGE:
            return None
        return loader.pages(document)[page - 1].text

    return PageTexts(load, lambda document, page: (document, page) in kinds)


@dataclass
class PreparedResult:
    """The merged answer, checked against the user's schema: computed before the write
    transaction (validation can be slow on a large answer), stored inside it."""

    data: Any
    warnings: list[dict[str, Any]]
    errors: list[str]
    sources: dict[str, list[dict[str, Any]]] | None = None


def prepare_result(job: Job, outcome: MergeOutcome | list[ChunkAnswer], resolved: dict[str, Any],
                   pages: PageTexts, document_ids: list[str]) -> PreparedResult:
    if not isinstance(outcome, MergeOutcome):
        outcome = merge_answers(outcome, job.schema)
    schema = job.schema
    with validation_budget():  # one bound for the whole check of this answer
        data = drop_optional_nulls(apply_choices(outcome.data, resolved), schema)
        errors = validation_errors(data, schema)
    warnings = []
    for conflict in outcome.conflicts:
        entry = conflict.as_json()
        if conflict.path in resolved:
            entry["chosen"], entry["resolved_by"] = resolved[conflict.path], "model"
        warnings.append(entry)
    warnings.extend(d.as_json() for d in outcome.duplicates)
    sources = None
    if (job.options or {}).get("citations"):
        grounding = ground(data, supported_sources(data, outcome.sources or {}), pages,
                           document_ids)
        sources = grounding.sources
        warnings.extend(grounding.warnings)
    return PreparedResult(data, warnings, errors, sources)


def store_result(uow: UnitOfWork, job: Job, result: PreparedResult, settings: Settings) -> None:
    """Stores the validated answer and ends the job (or fails it when the answer is invalid);
    the webhook event carries the result when it fits ``LONGDOC_WEBHOOK_MAX_RESULT_BYTES``."""
    if result.errors:
        fail_job(uow, job, ErrorCode.MODEL_OUTPUT_INVALID,
                 "the answer does not match the schema: " + "; ".join(result.errors))
        return
    uow.session.add(Result(job_id=job.id, data=result.data, warnings=result.warnings,
                           sources=result.sources))
    finish_job(uow, job, JobStatus.SUCCEEDED,
               result={"data": result.data, "warnings": result.warnings, "sources": result.sources},
               max_result_bytes=settings.webhook_max_result_bytes)
    log.info("job.succeeded", job_id=job.id, cost_usd=job.cost_usd)
