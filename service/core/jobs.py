"""Job rules: the options a job keeps, its budget, its plan of calls and what it may cost.

Pure functions over plain data: the API (planning ready documents at once) and the plan stage
share them, so a dry run and the real run plan alike.

Answers that grow with the document. The pages are cut by the input budget ("one call when it
fits"); the schema gives an upper bound of the answer (``service.core.sizing``). When that bound
says some call's answer may not fit the output cap, the job *learns first*: its first call goes
alone, asking for the whole cap; if its answer is whole, the rest goes out as planned, and if it
is cut, its complete items are kept and everything after them is re-planned with the density the
answer showed, so that each later answer fits with a margin (``workers.stages.extract``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from schemas.errors import ErrorCode, LongdocError
from schemas.strict import InvalidSchema, check_schema
from service.core.citations import cited_schema
from service.core.pageranges import InvalidPages, parse_ranges, select_pages
from service.core.pages import ExtractedPage, PageInfo, PageKind, PageStore, load_pages
from service.core.planner import Part, call_budget, plan_chunks
from service.core.planner import Plan as ChunkPlan
from service.core.profiles import ModelProfile, RateTier, cheapest_budget
from service.core.prompt import fixed_overhead
from service.core.settings import Settings
from service.core.sizing import AnswerSize, answer_size, lower_bound_calls, usable_output
from service.core.tokens import count_text

JOB_OPTIONS = ("mode", "merge", "image_detail", "pages_as_images", "max_tokens_per_call",
               "max_output_tokens", "max_cost_usd", "plan", "pages", "citations",
               "retention_seconds", "delete_documents")


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
    id: str = ""


def resolve_citations(schema: dict[str, Any], asked: bool | None) -> bool:
    """Whether a job asks the model for sources. Asked for, they are always given (a schema the
    wrapper cannot hold is refused, with the reason). Not said, they are on when they cost
    little: when no array of the schema grows with the document, sources add a few hundred
    answer tokens per call; when one does, they multiply a long answer (a source per value is
    ~25 tokens against ~4 for the value), its calls and its cost, so they stay off."""
    if asked is False:
        return False
    strict = check_schema(schema)
    if asked is None and answer_size(strict, False).grows:
        return False
    try:
        cited_schema(schema)
    except InvalidSchema:
        if asked:
            raise
        return False
    return True


def wire_schema(job: JobSpec) -> dict[str, Any]:
    """The strict schema sent to the model: the user's, or ``{data, sources}`` with citations."""
    if job.options.get("citations"):
        return cited_schema(job.schema)
    return check_schema(job.schema)


def job_answer_size(job: JobSpec) -> AnswerSize:
    """The schema's upper bound of the answers (sources included when asked for)."""
    return answer_size(check_schema(job.schema), bool(job.options.get("citations")))


def check_page_specs(pages: dict[str, str] | None, document_ids: Sequence[str]) -> None:
    """The syntax of a job's page ranges, and that they name the job's documents."""
    for doc_id, spec in (pages or {}).items():
        if doc_id not in document_ids:
            raise InvalidPages(f"pages names {doc_id[:40]}, which is not in document_ids")
        parse_ranges(spec, f"pages[{doc_id}]")


def selected_pages(options: dict[str, Any], documents: Sequence[DocumentPages]
                   ) -> list[set[int] | None] | None:
    """The pages each document is read at (None: all), checked against its page count."""
    pages = options.get("pages")
    if not pages:
        return None
    return [set(select_pages(pages[doc.id], len(doc.page_index), f"pages[{doc.id}]"))
            if doc.id in pages else None for doc in documents]


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
                           prompt_tokens: int, answer_tokens: int = 0) -> int:
    """``max_tokens`` of one call. The plan reserves the model's whole output in the window, but
    each call asks only for what its answer plausibly needs (its expected answer with half as
    much again, at least a quarter of its prompt): a request is charged against the
    tokens-per-minute budget for its ``max_tokens``. An answer cut off keeps its complete items
    and the job continues after them."""
    wanted = _wanted_output(settings, options)
    if wanted:
        return min(wanted, profile.max_output_tokens)
    return min(profile.max_output_tokens,
               max(2048, prompt_tokens // 4, -(-answer_tokens * 3 // 2)))


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
    cited = bool(options.get("citations"))
    overhead = fixed_overhead(profile, job.instructions, wire_schema(job),
                              options.get("mode", "json_schema"), cited)
    reserved = reserved_output(settings, profile, options)
    budget = call_budget(
        profile, overhead=overhead, reserved_output=reserved,
        safety_margin=settings.safety_margin_tokens, tpm_limit=account_limits(settings, profile).tpm,
        max_tokens_per_call=options.get("max_tokens_per_call"),
    )
    as_images = bool(options.get("pages_as_images"))
    pages = [page_infos(doc, as_images) for doc in documents]
    loader = TextLoader(store, documents)
    detail = options.get("image_detail", "auto")
    selected = selected_pages(options, documents)
    plan = plan_chunks(pages, profile, overhead=overhead, budget=budget, detail=detail,
                       load_text=loader, selected=selected)
    if options.get("plan") == "cheapest":
        cap = cheapest_budget(profile, budget=budget, overhead=overhead,
                              page_tokens=plan.total_tokens - overhead * len(plan.chunks),
                              output_per_call=expected_call_output(job, profile, settings),
                              margin=settings.safety_margin_tokens)
        if cap < budget:
            # Kept only if it really is cheaper once cut into whole pages.
            cheaper = plan_chunks(pages, profile, overhead=overhead, budget=cap, detail=detail,
                                  load_text=loader, selected=selected)
            if estimate_cost(job, cheaper, profile, settings) < estimate_cost(job, plan, profile,
                                                                               settings):
                plan = cheaper
    size = job_answer_size(job)
    plan.answer, plan.usable_output = size, usable_output(reserved)
    # Learn first when the schema's bound says some answer may not fit (module docstring).
    plan.hold = size.grows and len(plan.chunks) > 1 and any(
        size.tokens(c.prompt_tokens - overhead) > plan.usable_output for c in plan.chunks)
    return plan


def chunk_view(parts: Sequence[Part], prompt_tokens: int, document_ids: Sequence[str]) -> dict[str, Any]:
    """One call of a plan as the API shows it."""
    return {"documents": [document_ids[d - 1] for d in sorted({p.document for p in parts})],
            "pages": [parts[0].page, parts[-1].page], "prompt_tokens": prompt_tokens}


def answer_view(plan: ChunkPlan) -> dict[str, Any] | None:
    """How the plan expects the answers to grow (None when they do not)."""
    size = plan.answer
    if size is None or not size.grows:
        return None
    pages = sum(c.prompt_tokens - plan.overhead for c in plan.chunks)
    estimate = size.fixed + round(size.ratio * pages)
    return {"fixed_tokens": size.fixed, "ratio": round(size.ratio, 4), "ratio_learned": False,
            "page_tokens": pages,
            "estimated_tokens": estimate, "usable_per_call": plan.usable_output,
            "first_call_alone": plan.hold,
            "lower_bound_calls": lower_bound_calls(pages, plan.budget, estimate, plan.usable_output)}


def plan_view(plan: ChunkPlan, document_ids: Sequence[str]) -> dict[str, Any]:
    chunks = [chunk_view(c.parts, c.prompt_tokens, document_ids) for c in plan.chunks]
    return {"calls": len(plan.chunks), "budget_tokens": plan.budget, "chunks": chunks,
            "answer": answer_view(plan)}


def expected_output_tokens(strict_schema: dict[str, Any], reserved: int) -> int:
    """A working guess of one answer's length for estimates: a few times the schema's size."""
    return min(reserved, max(256, 3 * count_text(json.dumps(strict_schema))))


def expected_call_output(job: JobSpec, profile: ModelProfile, settings: Settings) -> int:
    """Output tokens one call is expected to bill: its answer, and on a reasoning model the
    reasoning tokens the profile estimates for it (both are billed as output)."""
    reserved = reserved_output(settings, profile, job.options)
    answer = expected_output_tokens(check_schema(job.schema), reserved)
    reasoning = math.ceil(answer * profile.reasoning_output_ratio) if profile.reasoning else 0
    return min(reserved, answer + reasoning)


def estimate_cost(job: JobSpec, plan: ChunkPlan, profile: ModelProfile, settings: Settings) -> float:
    """Call by call: each call's prompt decides its price tier (a prompt over a long-context
    threshold bills the whole call at the higher rates), so a plan's total tokens cannot."""
    per_call = expected_call_output(job, profile, settings)
    return sum(profile.cost_usd(chunk.prompt_tokens, 0, per_call) for chunk in plan.chunks)


def check_cost(job: JobSpec, plan: ChunkPlan, profile: ModelProfile, settings: Settings) -> float:
    """The plan's estimated cost; refused when above the job's ``max_cost_usd``."""
    estimate = estimate_cost(job, plan, profile, settings)
    limit = job.options.get("max_cost_usd")
    if limit is not None and estimate > limit:
        raise LongdocError(ErrorCode.BUDGET_EXCEEDED,
                           f"estimated cost ${estimate:.6f} is above max_cost_usd ${limit:.6f}")
    return estimate
