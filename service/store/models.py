"""Tables. The database owns all job state; Redis only carries task messages."""

from __future__ import annotations

import secrets
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from schemas.api import DocumentStatus, JobStatus

__all__ = ["ChunkStatus", "DeliveryStatus", "DocumentStatus", "JobStatus"]


class ChunkStatus(StrEnum):
    PENDING = "pending"  # runnable (from not_before on), waiting for a dispatch slot
    DISPATCHED = "dispatched"  # sent to the model queue, not yet claimed
    RUNNING = "running"  # claimed: a worker holds its lease
    DONE = "done"
    SPLIT = "split"  # replaced by other chunks (halves, or pages re-planned after an answer)
    HELD = "held"  # waits for the job's first answer, which sets how long answers are
    CANCELED = "canceled"  # its job ended (canceled or failed) before it ran: never sent


class CallStatus(StrEnum):
    SENT = "sent"  # recorded before the request left: on the books whatever happens next
    ANSWERED = "answered"
    FAILED = "failed"  # no answer came (refused, timed out, connection lost before a response)
    UNKNOWN = "unknown"  # its worker died while it was in flight: the endpoint may have billed it


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"  # every attempt of the schedule failed
    DISABLED = "disabled"  # the receiver answered 410 Gone


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every database (SQLite keeps no zone of its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.astimezone(UTC) if value is not None and value.tzinfo else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: UTCDateTime()}


class Leased:
    """A unit of work that a worker claims with a conditional update and renews while it works
    (``service.store.leases``). The recovery sweep re-sends what is runnable and unclaimed:
    an expired lease (a dead worker), or a task sent long ago and never claimed (a lost message)."""

    lease_owner: Mapped[str | None] = mapped_column(String(80))
    lease_until: Mapped[datetime | None] = mapped_column()
    dispatched_at: Mapped[datetime | None] = mapped_column()


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    webhook_secret: Mapped[str] = mapped_column(String(100))
    # After a rotation, deliveries are signed with both secrets until this time (Standard
    # Webhooks carries several signatures), so receivers can switch without losing events.
    previous_webhook_secret: Mapped[str | None] = mapped_column(String(100))
    previous_webhook_secret_until: Mapped[datetime | None] = mapped_column()
    # Quotas (``service.store.quotas``); None is no limit.
    max_concurrent_jobs: Mapped[int | None] = mapped_column(Integer)
    max_pages_per_day: Mapped[int | None] = mapped_column(BigInteger)
    max_tokens_per_day: Mapped[int | None] = mapped_column(BigInteger)
    max_usd_per_month: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Set when the key is rotated out: it keeps working until then (the grace period).
    expires_at: Mapped[datetime | None] = mapped_column()


ID_PATTERN = r"^[a-z]{3}_[0-9a-f]{24}$"


def is_id(value: str, prefix: str) -> bool:
    """Whether ``value`` has the shape of an id we issue (checked before any lookup)."""
    return (len(value) == len(prefix) + 25 and value.startswith(prefix + "_")
            and all(c in "0123456789abcdef" for c in value[len(prefix) + 1:]))


class Document(Leased, Base):
    __tablename__ = "documents"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    filename: Mapped[str | None] = mapped_column(String(500))
    source_url: Mapped[str | None] = mapped_column(String(2000))  # uploaded by URL
    sha256: Mapped[str] = mapped_column(String(64))
    media_type: Mapped[str] = mapped_column(String(100))
    bytes: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(20), default=DocumentStatus.PROCESSING, index=True)
    pages: Mapped[int | None] = mapped_column(Integer)
    # Pages parsed so far while processing (ingestion reports it): the progress of a long parse.
    pages_parsed: Mapped[int | None] = mapped_column(Integer)
    tokens: Mapped[int | None] = mapped_column(BigInteger)
    # Per page: [kind, text tokens, width, height, image bytes]: what the planner needs.
    page_index: Mapped[list[Any] | None] = mapped_column(JSON)
    # Storage key of the extracted pages (text and image keys), so nothing parses the file again.
    pages_key: Mapped[str | None] = mapped_column(String(64))
    # Encrypted (service.core.secrets), held only until ingestion has opened the file.
    password_sealed: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error_code: Mapped[str | None] = mapped_column(String(60))
    error_message: Mapped[str | None] = mapped_column(Text)
    # When the retention purge deletes it (``service.store.retention``): upload time plus
    # LONGDOC_RETENTION_SECONDS, or sooner when a ``delete_documents`` job that read it ends.
    purge_at: Mapped[datetime | None] = mapped_column(index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class DocumentBlob(Base):
    """Stored files a document owns besides its upload (pages artifact, page images): a stored
    file no row refers to is collected."""

    __tablename__ = "document_blobs"
    document_id: Mapped[str] = mapped_column(ForeignKey("documents.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)


class Job(Leased, Base):
    __tablename__ = "jobs"
    # Jobs whose use is not in the ledger yet (NULL first): what the purge charges, and per
    # tenant what quotas add to the ledger.
    __table_args__ = (Index("ix_jobs_charged_at_tenant_id", "charged_at", "tenant_id"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    # The documents as the job was created with them: a document deleted later keeps its id
    # here (its job_documents row goes with it).
    document_ids: Mapped[list[Any] | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.QUEUED, index=True)
    schema: Mapped[dict[str, Any]] = mapped_column(JSON)
    instructions: Mapped[str | None] = mapped_column(Text)
    webhook_url: Mapped[str | None] = mapped_column(String(2000))
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    profile: Mapped[str] = mapped_column(String(100))
    model: Mapped[str | None] = mapped_column(String(200))
    plan: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    chunks_total: Mapped[int] = mapped_column(Integer, default=0)
    chunks_done: Mapped[int] = mapped_column(Integer, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cached_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger, default=0)  # within completion
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    gateway_cost_usd: Mapped[float | None] = mapped_column(Float)
    finalizing: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Calls whose worker died in flight: their predicted prompt is in cost_usd as an estimate.
    unknown_calls: Mapped[int] = mapped_column(Integer, default=0)
    # Set while a chunk waits for the model to come back (an outage costs latency, not the job).
    waiting_reason: Mapped[str | None] = mapped_column(String(60))
    waiting_since: Mapped[datetime | None] = mapped_column()
    error_code: Mapped[str | None] = mapped_column(String(60))
    error_message: Mapped[str | None] = mapped_column(Text)
    # Pages its plan reads (set when it starts): what the pages-per-day quota counts.
    pages: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column(index=True)
    # Set by the retention purge once the job has ended and nothing of it is in flight: its use
    # went into the tenant's ledger then, and its data is deleted at ``purge_at``.
    charged_at: Mapped[datetime | None] = mapped_column()
    purge_at: Mapped[datetime | None] = mapped_column(index=True)


class JobDocument(Base):
    __tablename__ = "job_documents"
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    document_id: Mapped[str] = mapped_column(ForeignKey("documents.id"), primary_key=True, index=True)
    position: Mapped[int] = mapped_column(Integer)


class Chunk(Leased, Base):
    __tablename__ = "chunks"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    tenant_id: Mapped[str] = mapped_column(String(40))  # for fair dispatch across tenants
    # Sort key that keeps document order through splits: "0003", then "0003.0001", ...
    ordinal: Mapped[str] = mapped_column(String(200))
    # [{"document": position, "page": n, "span": [start, end] | null}, ...]
    parts: Mapped[list[Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(20), default=ChunkStatus.PENDING, index=True)
    not_before: Mapped[datetime | None] = mapped_column()  # a retry after a model outage
    outage_since: Mapped[datetime | None] = mapped_column()  # first unavailable answer in a row
    predicted_tokens: Mapped[int] = mapped_column(Integer, default=0)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    finish_reason: Mapped[str | None] = mapped_column(String(40))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error_code: Mapped[str | None] = mapped_column(String(60))
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ModelCall(Base):
    __tablename__ = "model_calls"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    chunk_id: Mapped[str | None] = mapped_column(String(40), index=True)
    status: Mapped[str] = mapped_column(String(20), default=CallStatus.SENT, index=True)
    purpose: Mapped[str] = mapped_column(String(20), default="extract")  # or "merge"
    model: Mapped[str | None] = mapped_column(String(200))
    status_code: Mapped[int | None] = mapped_column(Integer)
    finish_reason: Mapped[str | None] = mapped_column(String(40))
    predicted_prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cached_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    reasoning_tokens: Mapped[int] = mapped_column(Integer, default=0)  # within completion
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    gateway_cost_usd: Mapped[float | None] = mapped_column(Float)
    latency_ms: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    # Whether the answer went into the result (a cut one: its complete items), and how many
    # array items it held whole: "no answer is thrown away" is visible per call.
    answer_used: Mapped[bool | None] = mapped_column(Boolean)
    answer_items: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class IdempotencyKey(Base):
    """A request made once whatever the retries (``Idempotency-Key``, as Stripe does): the
    response is kept for a day and given again to a retry with the same key and body."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("tenant_id", "endpoint", "key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    endpoint: Mapped[str] = mapped_column(String(40))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class Result(Base):
    __tablename__ = "results"
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    warnings: Mapped[list[Any]] = mapped_column(JSON, default=list)
    # With citations: JSON Pointer into data -> [{document, page, quote, verified}]
    sources: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    __tablename__ = "webhook_deliveries"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # the webhook-id header
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    url: Mapped[str] = mapped_column(String(2000))
    event: Mapped[str] = mapped_column(String(40))
    payload: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), default=DeliveryStatus.PENDING, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(index=True)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobEvent(Base):
    """What happened to a job, in commit order: the source of long-polls and event streams.

    Written by ``service.store.events`` in the transaction that made the change."""

    __tablename__ = "job_events"
    # (job, id): a job's events in order, and its latest one, straight from the index.
    __table_args__ = (Index("ix_job_events_job_id_id", "job_id", "id"),)
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    type: Mapped[str] = mapped_column(String(20))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)


class TenantUsage(Base):
    """What a tenant's ended jobs used, per UTC day: the quotas' ledger. It holds numbers only,
    so it outlives the jobs it counts (deleting a job gives no quota back)."""

    __tablename__ = "tenant_usage"
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    jobs: Mapped[int] = mapped_column(Integer, default=0)
    pages: Mapped[int] = mapped_column(BigInteger, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)


class WebhookAttempt(Base):
    __tablename__ = "webhook_attempts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("webhook_deliveries.id"), index=True)
    attempted_at: Mapped[datetime] = mapped_column(default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int] = mapped_column(Integer, default=0)


# Every session appends job events as it flushes (imported last: the listener needs the tables).
import service.store.events  # noqa: E402,F401
