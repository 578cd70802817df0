"""Jobs: creation rules, the plan of calls, and the public view of a job."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from schemas.api import ErrorDetail, JobCreate, JobOut, Plan, PlanChunk, Progress, Usage
from schemas.strict import InvalidSchema, check_schema
from service.errors import ApiError
from service.models import Chunk, Document, Job, JobDocument, new_id, utcnow
from service.pages import info_from_row, load_pages
from service.planner import Part, PlanningError, call_budget, plan_chunks
from service.planner import Plan as ChunkPlan
from service.profiles import ModelProfile, RateTier
from service.prompt import fixed_overhead
from service.settings import Settings
from service.storage import LocalStorage
from service.tokens import count_text

JOB_OPTIONS = ("mode", "merge", "image_detail", "pages_as_images", "max_tokens_per_call",
               "max_output_tokens", "max_cost_usd")


def account_limits(settings: Settings, profile: ModelProfile) -> RateTier:
    """The account's limits: explicit settings win, then the profile's tier preset; 0 = none."""
    tier = profile.tiers.get(settings.rate_limit_tier) if settings.rate_limit_tier else None
    return RateTier(rpm=settings.rate_limit_rpm or (tier.rpm if tier else 0),
                    tpm=settings.rate_limit_tpm or (tier.tpm if tier else 0))


def reserved_output(settings: Settings, profile: ModelProfile, options: dict[str, Any]) -> int:
    wanted = options.get("max_output_tokens") or settings.reserved_output_tokens
    return min(wanted or profile.max_output_tokens, profile.max_output_tokens)


def output_tokens_for_call(settings: Settings, profile: ModelProfile, options: dict[str, Any],
                           prompt_tokens: int) -> int:
    """``max_tokens`` of one call. The plan reserves the model's whole output in the window, but
    each call asks only for what its answer plausibly needs: a request is charged against the
    tokens-per-minute budget for its ``max_tokens``. An answer cut off is split and retried."""
    wanted = options.get("max_output_tokens") or settings.reserved_output_tokens
    if wanted:
        return min(wanted, profile.max_output_tokens)
    return min(profile.max_output_tokens, max(2048, prompt_tokens // 4))


class TextLoader:
    """Page text by (document position, page), reading each document's pages once."""

    def __init__(self, storage: LocalStorage, documents: Sequence[Document]) -> None:
        self.storage, self.documents = storage, documents
        self._cache: dict[int, list] = {}  # type: ignore[type-arg]

    def pages(self, d: int) -> list:  # type: ignore[type-arg]
        if d not in self._cache:
            key = self.documents[d - 1].pages_key
            self._cache[d] = load_pages(self.storage, key) if key else []
        return self._cache[d]

    def __call__(self, d: int, p: int) -> str:
        return self.pages(d)[p - 1].text


def page_infos(doc: Document, as_images: bool) -> list:  # type: ignore[type-arg]
    infos = [info_from_row(row) for row in doc.page_index or []]
    if as_images and doc.media_type == "application/pdf":
        infos = [info if info.kind == "image" or not info.width else
                 type(info)("image", 0, info.width, info.height, info.image_bytes)
                 for info in infos]
    return infos


def make_plan(job: Job, documents: Sequence[Document], profile: ModelProfile,
              settings: Settings, storage: LocalStorage) -> ChunkPlan:
    options = job.options or {}
    strict = check_schema(job.schema)
    overhead = fixed_overhead(profile, job.instructions, strict, options.get("mode", "json_schema"))
    budget = call_budget(
        profile, overhead=overhead, reserved_output=reserved_output(settings, profile, options),
        safety_margin=settings.safety_margin_tokens, tpm_limit=account_limits(settings, profile).tpm,
        max_tokens_per_call=options.get("max_tokens_per_call"),
    )
    as_images = bool(options.get("pages_as_images"))
    return plan_chunks(
        [page_infos(doc, as_images) for doc in documents], profile, overhead=overhead,
        budget=budget, detail=options.get("image_detail", "auto"),
        load_text=TextLoader(storage, documents),
    )


def start_job(session: Session, job: Job, plan: ChunkPlan, document_ids: Sequence[str]) -> list[str]:
    """Marks the job running with one chunk row per planned call; returns the chunk ids to send
    (after the commit)."""
    job.status, job.started_at = "running", utcnow()
    job.plan = plan_view(plan, document_ids)
    job.chunks_total, job.chunks_done = len(plan.chunks), 0
    ids = []
    for i, chunk in enumerate(plan.chunks):
        row = Chunk(id=new_id("chk"), job_id=job.id, ordinal=f"{i:05d}",
                    parts=[p.as_json() for p in chunk.parts], predicted_tokens=chunk.prompt_tokens)
        session.add(row)
        ids.append(row.id)
    return ids


def chunk_view(parts: Sequence[Part], prompt_tokens: int, document_ids: Sequence[str]) -> dict[str, Any]:
    """One call of a plan as the API shows it."""
    return {"documents": [document_ids[d - 1] for d in sorted({p.document for p in parts})],
            "pages": [parts[0].page, parts[-1].page], "prompt_tokens": prompt_tokens}


def plan_view(plan: ChunkPlan, document_ids: Sequence[str]) -> dict[str, Any]:
    chunks = [chunk_view(c.parts, c.prompt_tokens, document_ids) for c in plan.chunks]
    return {"calls": len(plan.chunks), "budget_tokens": plan.budget, "chunks": chunks}


def estimate_cost(plan: ChunkPlan, profile: ModelProfile, output_per_call: int) -> float:
    calls = len(plan.chunks)
    return profile.cost_usd(plan.total_tokens, 0, output_per_call * calls)


def expected_output_tokens(strict_schema: dict[str, Any], reserved: int) -> int:
    """A working guess of one answer's length for estimates: a few times the schema's size."""


    return min(reserved, max(256, 3 * count_text(json.dumps(strict_schema))))


def owned_documents(session: Session, tenant_id: str, ids: Sequence[str]) -> list[Document]:
    if len(set(ids)) != len(ids):
        raise ApiError(422, "invalid_request", "document_ids contains duplicates")
    found = {d.id: d for d in session.scalars(select(Document).where(Document.id.in_(ids)))}
    docs = []
    for doc_id in ids:
        doc = found.get(doc_id)
        if doc is None or doc.tenant_id != tenant_id:
            raise ApiError(404, "not_found", f"document {doc_id} not found")
        docs.append(doc)
    return docs


def new_job(tenant_id: str, body: JobCreate, profile: str) -> Job:
    try:
        check_schema(body.json_schema)
    except InvalidSchema as exc:
        raise ApiError(422, "invalid_schema", str(exc)) from None
    options = {k: getattr(body, k) for k in JOB_OPTIONS if getattr(body, k) is not None}
    return Job(id=new_id("job"), tenant_id=tenant_id, status="queued", schema=body.json_schema,
               instructions=body.instructions, webhook_url=body.webhook_url, options=options,
               profile=profile)


def attach_documents(session: Session, job: Job, docs: Sequence[Document]) -> None:
    for position, doc in enumerate(docs, start=1):
        session.add(JobDocument(job_id=job.id, document_id=doc.id, position=position))


def job_document_ids(session: Session, job_id: str) -> list[str]:
    return list(session.scalars(select(JobDocument.document_id)
                                .where(JobDocument.job_id == job_id)
                                .order_by(JobDocument.position)))


def job_documents(session: Session, job_id: str) -> list[Document]:
    return list(session.scalars(
        select(Document).join(JobDocument, JobDocument.document_id == Document.id)
        .where(JobDocument.job_id == job_id).order_by(JobDocument.position)))


def job_out(job: Job, document_ids: list[str]) -> JobOut:
    error = ErrorDetail(code=job.error_code, message=job.error_message or "") if job.error_code else None
    plan = None
    if job.plan:
        plan = Plan(calls=job.plan["calls"], budget_tokens=job.plan["budget_tokens"],
                    chunks=[PlanChunk(**c) for c in job.plan["chunks"]])
    return JobOut(
        id=job.id, status=job.status, document_ids=document_ids, model=job.model,
        profile=job.profile,
        progress=Progress(chunks_total=job.chunks_total, chunks_done=job.chunks_done),
        usage=Usage(prompt_tokens=job.prompt_tokens, cached_tokens=job.cached_tokens,
                    completion_tokens=job.completion_tokens),
        cost_usd=round(job.cost_usd, 8), gateway_cost_usd=job.gateway_cost_usd, plan=plan,
        error=error, created_at=job.created_at, started_at=job.started_at,
        finished_at=job.finished_at,
    )


def planning_error(exc: PlanningError) -> ApiError:
    return ApiError(422, exc.code, str(exc))
