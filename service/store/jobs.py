"""Queries and writes about jobs and their documents, shared by the API and the stages."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from schemas.api import JobCreate
from schemas.errors import ErrorCode, LongdocError
from service.core.jobs import (
    JOB_OPTIONS,
    DocumentPages,
    JobSpec,
    check_page_specs,
    plan_view,
    resolve_citations,
)
from service.core.planner import Plan
from service.store.db import UnitOfWork
from service.store.dispatch import dispatch
from service.store.models import (
    Chunk,
    ChunkStatus,
    Document,
    DocumentStatus,
    Job,
    JobDocument,
    JobStatus,
    new_id,
    utcnow,
)


def job_spec(job: Job) -> JobSpec:
    return JobSpec(schema=job.schema, instructions=job.instructions, options=job.options or {})


def document_pages(doc: Document) -> DocumentPages:
    return DocumentPages(media_type=doc.media_type, page_index=doc.page_index or [],
                         pages_key=doc.pages_key, id=doc.id)


def new_job(tenant_id: str, body: JobCreate, profile: str) -> Job:
    """The job row. Its page ranges are checked for syntax (their pages once each document's
    page count is known), and whether it asks for sources is settled here, once."""
    check_page_specs(body.pages, body.document_ids)
    options = {k: getattr(body, k) for k in JOB_OPTIONS if getattr(body, k) is not None}
    options["citations"] = resolve_citations(body.json_schema, body.citations)
    return Job(id=new_id("job"), tenant_id=tenant_id, status=JobStatus.QUEUED,
               document_ids=list(body.document_ids), schema=body.json_schema,
               instructions=body.instructions, webhook_url=body.webhook_url, options=options,
               profile=profile)


def owned_documents(session: Session, tenant_id: str, ids: Sequence[str]) -> list[Document]:
    if len(set(ids)) != len(ids):
        raise LongdocError(ErrorCode.INVALID_REQUEST, "document_ids contains duplicates")
    found = {d.id: d for d in session.scalars(select(Document).where(Document.id.in_(ids)))}
    docs = []
    for doc_id in ids:
        doc = found.get(doc_id)
        if doc is None or doc.tenant_id != tenant_id:
            raise LongdocError(ErrorCode.NOT_FOUND, f"document {doc_id} not found")
        docs.append(doc)
    return docs


def first_failed(docs: Sequence[Document]) -> Document | None:
    return next((d for d in docs if d.status == DocumentStatus.FAILED), None)


def attach_documents(session: Session, job: Job, docs: Sequence[Document]) -> None:
    for position, doc in enumerate(docs, start=1):
        session.add(JobDocument(job_id=job.id, document_id=doc.id, position=position))


def job_document_ids(session: Session, job_id: str) -> list[str]:
    """The job's documents as it was created with them (a deleted document's id stays)."""
    ids = session.scalar(select(Job.document_ids).where(Job.id == job_id))
    if ids is not None:
        return [str(i) for i in ids]
    return list(session.scalars(select(JobDocument.document_id)
                                .where(JobDocument.job_id == job_id)
                                .order_by(JobDocument.position)))


def lock_documents(session: Session, tenant_id: str, ids: Sequence[str]) -> None:
    """Holds the documents a new job reads until it commits (a delete waits, then sees the
    job); one deleted since it was read is 404. SQLite serialises writers already."""
    found = set(session.scalars(select(Document.id).where(
        Document.id.in_(ids), Document.tenant_id == tenant_id).with_for_update(read=True)))
    missing = next((i for i in ids if i not in found), None)
    if missing is not None:
        raise LongdocError(ErrorCode.NOT_FOUND, f"document {missing} not found")


def job_documents(session: Session, job_id: str) -> list[Document]:
    return list(session.scalars(
        select(Document).join(JobDocument, JobDocument.document_id == Document.id)
        .where(JobDocument.job_id == job_id).order_by(JobDocument.position)))


def jobs_waiting_on(session: Session, document_id: str) -> list[Job]:
    """Queued jobs that read the document: they start (or fail) when it is ingested."""
    return list(session.scalars(
        select(Job).join(JobDocument, JobDocument.job_id == Job.id)
        .where(JobDocument.document_id == document_id, Job.status == JobStatus.QUEUED)))


def start_job(uow: UnitOfWork, job: Job, plan: Plan, document_ids: Sequence[str],
              window: int) -> None:
    """Marks the job running with one chunk row per planned call; as many as the dispatch window
    has room for are sent once this commits, the rest as slots free up."""
    now = utcnow()
    job.status, job.started_at = JobStatus.RUNNING, now
    job.plan = plan_view(plan, document_ids)
    job.chunks_total, job.chunks_done = len(plan.chunks), 0
    job.pages = plan_pages(plan)
    for i, chunk in enumerate(plan.chunks):
        # A job that learns first holds all but its first chunk until that answer is in.
        status = ChunkStatus.HELD if plan.hold and i > 0 else ChunkStatus.PENDING
        uow.session.add(Chunk(id=new_id("chk"), job_id=job.id, tenant_id=job.tenant_id,
                              ordinal=f"{i:05d}", parts=[p.as_json() for p in chunk.parts],
                              predicted_tokens=chunk.prompt_tokens, created_at=now,
                              status=status))
    uow.session.flush()
    dispatch(uow, window)


def plan_pages(plan: Plan) -> int:
    """Pages a plan reads (a page cut into spans counts once)."""
    return len({(p.document, p.page) for chunk in plan.chunks for p in chunk.parts})


def lock_job(session: Session, job_id: str) -> Job:
    """The job row, locked for this transaction (SQLite's writers are serialised already)."""
    return session.execute(select(Job).where(Job.id == job_id).with_for_update()).scalar_one()
