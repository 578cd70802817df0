"""Job rules: the options a job keeps, its budget, its plan of calls and what it may cost.

Pure functions over plain data: the API (planning ready documents at once) and the plan stage
share them, so a dry run and the real run plan alike.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from schemas.errors import ErrorCode, LongdocError
from schemas.strict import check_schema
from service.core.pages import ExtractedPage, PageInfo, PageKind, PageStore, load_pages
from service.core.planner import Part, call_budget, plan_chunks
from service.core.planner import Plan as ChunkPlan
from service.core.profiles import ModelProfile, RateTier
from service.core.prompt import fixed_overhead
from service.core.settings import Settings
from service.core.tokens import count_text

JOB_OPTIONS = ("mode", "merge", "image_detail", "pages_as_images", "max_tokens_per_call",
               "max_output_tokens", "max_cost_usd", "retention_seconds", "delete_documents")


@dataclass(frozen=True)
class JobSpec:
    """What a job asks for, as planning needs it."""

    schema: dict[str, Any]
    instructions: str | None
    options: dict[str, Any]


@dataclass(frozen=True)
class DocumentPages:
    """A ready document as planning needs it: its page index and where its pages are stored."""

    media_type: str
    page_index: list[Any]
    pages_key: str | None


def account_limits(settings: Settings, profile: ModelProfile) -> RateTier:
    """The account's limits: explicit settings win, then the profile's tier preset; 0 = none."""
    tier = profile.tiers.get(settings.rate_limit_tier) if settings.rate_limit_tier else None
    return RateTier(rpm=settings.rate_limit_rpm or (tier.rpm if tier else 0),
                    tpm=settings.rate_limit_tpm or (tier.tpm if tier else 0))


def _wanted_output(settings: Settings, options: dict[str, Any]) -> int:
    """The answer length the job or the deployment asked for; 0 = not set."""
    return int(options.get("max_output_tokens") or settings.reserved_output_tokens or 0)


def reserved_output(settings: Settings, profile: ModelProfile, options: dict[str, Any]) -> int:
    """Room for the answer kept free in the window of every call."""
    return min(_wanted_output(settings, options) or profile.max_output_tokens,
               profile.max_output_tokens)


def output_tokens_for_call(settings: Settings, profile: ModelProfile, options: dict[str, Any],
                           prompt_tokens: int) -> int:
    """``max_tokens`` of one call. The plan reserves the model's whole output in the window, but
    each call asks only for what its answer plausibly needs: a request is charged against the
    tokens-per-minute budget for its ``max_tokens``. An answer cut off is split and retried."""
    wanted = _wanted_output(settings, options)
    if wanted:
        return min(wanted, profile.max_output_tokens)
    return min(profile.max_output_tokens, max(2048, prompt_tokens // 4))


class TextLoader:
    """Pages by (document position, page), reading each document's artifact once."""

    def __init__(self, store: PageStore, documents: Sequence[DocumentPages]) -> None:
        self.store, self.documents = store, documents
        self._cache: dict[int, list[ExtractedPage]] = {}

    def pages(self, d: int) -> list[ExtractedPage]:
        if d not in self._cache:
            key = self.documents[d - 1].pages_key
            self._cache[d] = load_pages(self.store, key) if key else []
        return self._cache[d]

    def __call__(self, d: int, p: int) -> str:
        return self.pages(d)[p - 1].text


def page_infos(doc: DocumentPages, as_images: bool) -> list[PageInfo]:
    infos = [PageInfo.from_row(row) for row in doc.page_index]
    if as_images and doc.media_type == "application/pdf":
        infos = [info if info.kind == PageKind.IMAGE or not info.width else
                 PageInfo(PageKind.IMAGE, 0, info.width, info.height, info.image_bytes)
                 for info in infos]
    return infos


def needs_page_renders(doc: DocumentPages) -> bool:
    """Whether ``pages_as_images`` must render pages this PDF's ingestion did not."""
    return (doc.media_type == "application/pdf" and bool(doc.pages_key)
            and not all(PageInfo.from_row(row).has_image for row in doc.page_index))


def make_plan(job: JobSpec, documents: Sequence[DocumentPages], profile: ModelProfile,
              settings: Settings, store: PageStore) -> ChunkPlan:
    options = job.options
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
        load_text=TextLoader(store, documents),
    )


def chunk_view(parts: Sequence[Part], prompt_tokens: int, document_ids: Sequence[str]) -> dict[str, Any]:
    """One call of a plan as the API shows it."""
    return {"documents": [document_ids[d - 1] for d in sorted({p.document for p in parts})],
            "pages": [parts[0].page, parts[-1].page], "prompt_tokens": prompt_tokens}


def plan_view(plan: ChunkPlan, document_ids: Sequence[str]) -> dict[str, Any]:
    chunks = [chunk_view(c.parts, c.prompt_tokens, document_ids) for c in plan.chunks]
    return {"calls": len(plan.chunks), "budget_tokens": plan.budget, "chunks": chunks}


def expected_output_tokens(strict_schema: dict[str, Any], reserved: int) -> int:
    """A working guess of one answer's length for estimates: a few times the schema's size."""
    return min(reserved, max(256, 3 * count_text(json.dumps(strict_schema))))


def estimate_cost(job: JobSpec, plan: ChunkPlan, profile: ModelProfile, settings: Settings) -> float:
    reserved = reserved_output(settings, profile, job.options)
    per_call = expected_output_tokens(check_schema(job.schema), reserved)
    return profile.cost_usd(plan.total_tokens, 0, per_call * len(plan.chunks))


def check_cost(job: JobSpec, plan: ChunkPlan, profile: ModelProfile, settings: Settings) -> float:
    """The plan's estimated cost; refused when above the job's ``max_cost_usd``."""
    estimate = estimate_cost(job, plan, profile, settings)
    limit = job.options.get("max_cost_usd")
    if limit is not None and estimate > limit:
        raise LongdocError(ErrorCode.BUDGET_EXCEEDED,
                           f"estimated cost ${estimate:.6f} is above max_cost_usd ${limit:.6f}")
    return estimate
