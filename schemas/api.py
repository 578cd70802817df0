"""Request and response bodies of the public API."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def ended(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)


class DocumentStatus(StrEnum):
    PROCESSING = "processing"
    READY = "ready"
    FAILED = "failed"


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class HealthOut(BaseModel):
    """The process answers (liveness)."""

    status: Literal["ok"]


class ReadyOut(BaseModel):
    """Every dependency answered: ``checks`` names each (database, redis, broker, storage)."""

    status: Literal["ready"]
    checks: dict[str, str]


class NotReadyOut(ErrorBody):
    """503 ``not_ready``: ``checks`` says which dependency did not answer, and how."""

    checks: dict[str, str]


class DocumentOut(BaseModel):
    id: str
    filename: str | None = None
    source_url: str | None = None
    sha256: str
    media_type: str
    bytes: int
    status: DocumentStatus
    pages: int | None = None
    pages_parsed: int | None = None  # while processing: how far ingestion has got
    tokens: int | None = Field(default=None, description=(
        "what the document costs in a prompt at the default image detail (auto): "
        "text_tokens + image_tokens, page headers aside"))
    text_tokens: int | None = None
    image_tokens: int | None = Field(default=None, description=(
        "pages read as images, by the model profile's image rules at detail auto"))
    error: ErrorDetail | None = None
    created_at: datetime
    # When the retention purge deletes it (sooner if a delete_documents job that read it ends).
    expires_at: datetime | None = None


class PageOut(BaseModel):
    """The stored reading of one page: its text, or a note that the model reads it as an image."""

    document_id: str
    page: int
    pages: int
    kind: Literal["text", "image", "empty"]
    text: str
    tokens: int
    has_image: bool



DocumentId = Annotated[str, Field(pattern=r"^doc_[0-9a-f]{24}$")]


class DocumentFromUrl(BaseModel):
    """``POST /v1/documents`` with a JSON body: the service fetches the file itself."""

    model_config = ConfigDict(extra="forbid", strict=True)

    url: str = Field(max_length=2000)
    password: str | None = Field(default=None, max_length=4096)


class JobCreate(BaseModel):
    # Strict: numbers are numbers (no "5", no true), finite, and nothing unknown is accepted.
    model_config = ConfigDict(populate_by_name=True, extra="forbid", strict=True)

    document_ids: list[DocumentId] = Field(min_length=1, max_length=100)
    json_schema: dict[str, Any] = Field(alias="schema")
    # No NUL: it is not text (PostgreSQL refuses it in a text column).
    instructions: str | None = Field(default=None, max_length=100_000, pattern=r"^[^\x00]*$")
    webhook_url: str | None = Field(default=None, max_length=2000)
    mode: Literal["json_schema", "tools"] = "json_schema"
    merge: Literal["auto", "model"] = "auto"
    image_detail: Literal["auto", "low", "high"] = "auto"
    pages_as_images: bool = False
    max_tokens_per_call: int | None = Field(default=None, ge=4096, le=100_000_000)
    max_output_tokens: int | None = Field(default=None, ge=256, le=10_000_000)
    max_cost_usd: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    plan: Literal["fewest_calls", "cheapest"] = Field(default="fewest_calls", description=(
        "fewest_calls: one call when everything fits. cheapest: the plan of lowest estimated "
        "cost, which on a model with price tiers (GPT-6 Luna: prompts over 272K tokens cost 2x) "
        "can be several calls under the tier's threshold"))
    # Per document id, the pages to read: "1-5,9", "10-" (to the end). Others: every page.
    pages: dict[DocumentId, str] | None = Field(default=None, max_length=100)
    # Sources for every value (page and verbatim quote, verified). Not given: on when the schema
    # has no array that grows with the document (they cost little then), off otherwise.
    citations: bool | None = None
    # Seconds the job's data is kept after it ends (at most LONGDOC_RETENTION_SECONDS).
    retention_seconds: int | None = Field(default=None, ge=0, le=10 * 365 * 86400)
    # Delete the job's documents once it has ended (and no other unfinished job reads them).
    delete_documents: bool = False
    dry_run: bool = False


class Usage(BaseModel):
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    # Of ``completion_tokens``: what a reasoning model spent reasoning (billed as output).
    reasoning_tokens: int = 0
    # Calls whose worker stopped while they were in flight: the endpoint may have billed them.
    # Their predicted prompt is in ``cost_usd`` (``cost_is_estimate``), not in the token counts.
    unknown_calls: int = 0


class Waiting(BaseModel):
    """The job is waiting for the model to come back (it retries; it fails only after
    ``LONGDOC_MODEL_OUTAGE_S``)."""

    reason: str  # model_unavailable, rate_limited
    since: datetime


class Progress(BaseModel):
    chunks_total: int = 0
    chunks_done: int = 0


class PlanChunk(BaseModel):
    documents: list[str]
    pages: list[int]  # [first, last], 1-based, across the chunk's documents
    prompt_tokens: int


class PlanAnswer(BaseModel):
    """How long the answers are expected to be, when the schema has arrays that grow with the
    document. Before any answer the ratio is the schema's upper bound; once an answer is in,
    it is what the job's answers showed (``ratio_learned``)."""

    fixed_tokens: int
    ratio: float = Field(description="answer tokens per page token")
    ratio_learned: bool = False
    estimated_tokens: int
    usable_per_call: int = Field(description="the answer each call is planned to hold")
    first_call_alone: bool = Field(description="the first call goes alone and its answer sets "
                                   "how the rest is cut")
    lower_bound_calls: int


class Plan(BaseModel):
    calls: int
    budget_tokens: int
    chunks: list[PlanChunk]
    answer: PlanAnswer | None = None


class JobOut(BaseModel):
    id: str
    status: JobStatus
    document_ids: list[str]
    model: str | None
    profile: str
    progress: Progress
    usage: Usage
    cost_usd: float
    cost_is_estimate: bool = False
    gateway_cost_usd: float | None = None
    plan: Plan | None = None
    waiting: Waiting | None = None
    error: ErrorDetail | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # Once the job has ended: when its data (result, chunks, calls, events, webhooks) is deleted.
    expires_at: datetime | None = None


class JobEventType(StrEnum):
    STATUS = "status"  # data: {status, error}
    PROGRESS = "progress"  # data: {chunks_done, chunks_total, usage, cost_usd, cost_is_estimate, waiting}
    DOCUMENT = "document"  # data: {document_id, status, pages, pages_parsed, error}


class JobEventOut(BaseModel):
    """One change of a job, as ``GET /v1/jobs/{id}/events`` streams it (the SSE ``data``)."""

    id: int
    job_id: str
    type: JobEventType
    at: datetime
    data: dict[str, Any]

    @property
    def ends_job(self) -> bool:
        return (self.type == JobEventType.STATUS
                and JobStatus(self.data.get("status", "queued")).ended)


class DryRunOut(BaseModel):
    dry_run: Literal[True] = True
    plan: Plan
    estimated_cost_usd: float
    profile: str


class ResultOut(BaseModel):
    job_id: str
    model: str | None
    data: dict[str, Any]
    warnings: list[Any] = []
    # With citations: JSON Pointer into ``data`` -> [{document, page, quote, verified}] (issue 12)
    sources: dict[str, list[dict[str, Any]]] | None = None
    usage: Usage
    cost_usd: float


class CallOut(BaseModel):
    chunk_id: str | None
    status: str = Field(description="sent, answered, failed or unknown (its worker stopped while "
                        "it was in flight: it may have been billed; the cost counts its prompt)")
    purpose: str = Field(description="extract (a chunk) or merge (merge: model)")
    model: str | None
    finish_reason: str | None
    predicted_prompt_tokens: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    reasoning_tokens: int = 0
    cost_usd: float
    gateway_cost_usd: float | None = None
    latency_ms: int
    error: str | None = None
    answer_used: bool | None = Field(default=None, description=(
        "whether the answer went into the result: a whole answer, or the complete items of one "
        "cut off at the output cap (null: no answer, or a merge call)"))
    answer_items: int | None = Field(default=None, description=(
        "array items the answer held whole (those of a cut answer are kept)"))
    at: datetime


class CallList(BaseModel):
    calls: list[CallOut]


class AttemptOut(BaseModel):
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int


class DeliveryOut(BaseModel):
    id: str
    event: str
    url: str
    status: str
    attempts: list[AttemptOut]
    next_attempt_at: datetime | None = None


class DeliveryList(BaseModel):
    deliveries: list[DeliveryOut]


class RedeliveryOut(BaseModel):
    id: str
    status: str


class DocumentList(BaseModel):
    data: list[DocumentOut]
    next_before: str | None = None


class JobList(BaseModel):
    data: list[JobOut]
    next_before: str | None = None


class QuotaUse(BaseModel):
    """One quota of the tenant: what is used in its window against the limit."""

    used: int | float
    limit: int | float | None = Field(description="null: no limit")
    window: Literal["now", "utc_day", "utc_month"]
    resets_at: datetime | None = Field(description="when the window starts again (null: now)")


class UsageOut(BaseModel):
    """``GET /v1/usage``: the tenant's use against its limits. Jobs still running count in the
    current windows with what they have used so far."""

    tenant: str
    concurrent_jobs: QuotaUse
    pages_per_day: QuotaUse
    tokens_per_day: QuotaUse
    usd_per_month: QuotaUse
