"""Ingestion: claim the document, parse the stored file in an isolated child into a pages
artifact, record the page index, then plan (or fail) the jobs that were waiting for it."""

from __future__ import annotations

import time
from typing import Any

from schemas.errors import ErrorCode
from schemas.tasks import Task
from service import metrics
from service.core.logs import log
from service.core.pages import page_info, prompt_tokens, save_pages
from service.core.secrets import unseal
from service.store.blobs import record_blobs
from service.store.db import UnitOfWork
from service.store.jobs import jobs_waiting_on
from service.store.leases import claim, holds, release
from service.store.models import Document, DocumentStatus, utcnow
from workers.context import WorkerContext
from workers.isolation import PageProgress, run_isolated
from workers.parsing import ParseError, PdfOptions, parse_document
from workers.stages.common import fail_jobs_waiting_on


def record_pages_parsed(ctx: WorkerContext, document_id: str) -> PageProgress:
    """Ingestion reports pages parsed on the document row (and so to the jobs waiting on it)."""

    def update(parsed: int, total: int | None) -> None:
        try:
            with ctx.unit_of_work() as uow:
                doc = uow.session.get(Document, document_id)
                if doc is not None and doc.status == DocumentStatus.PROCESSING:
                    doc.pages_parsed, doc.pages = parsed, total
        except Exception as exc:  # noqa: BLE001 - progress is best effort; the parse goes on
            log.warning("document.progress.failed", document_id=document_id, error=repr(exc))

    return PageProgress(update)


def parse_in_child(ctx: WorkerContext, doc: Document, password: str | None = None,
                   render_all: bool = False, progress: PageProgress | None = None) -> dict[str, Any]:
    """The document's pages artifact key, page index and the stored files it made,
    parsed in a child process with CPU-time and memory limits."""
    settings, storage = ctx.settings, ctx.storage
    # A local path, or a reader over ranged GETs (S3): opened here, so a store that does not
    # answer fails this task, which retries, instead of calling the file unreadable.
    source = storage.source(doc.sha256)
    options = PdfOptions(password=password, max_pages=settings.max_pages, render_all=render_all,
                         progress=progress)

    def work() -> dict[str, Any]:
        pages = parse_document(source, doc.media_type, storage, options)
        pages_key = save_pages(storage, pages)
        return {"pages_key": pages_key, "index": [page_info(p).as_row() for p in pages],
                "blobs": sorted({pages_key, *(p.image for p in pages if p.image)})}

    result: dict[str, Any] = run_isolated(
        work, cpu_s=settings.parse_cpu_seconds, memory_bytes=settings.parse_memory_bytes,
        wall_s=settings.parse_wall_seconds, progress=progress)
    return result


def ingest_document(ctx: WorkerContext, document_id: str) -> None:
    settings = ctx.settings
    with ctx.unit_of_work() as uow:
        if not claim(uow.session, Document, document_id, [DocumentStatus.PROCESSING], settings.lease_s):
            # Done already (a redelivered task) or held by another worker: re-send what follows.
            doc = uow.session.get(Document, document_id)
            if doc is not None and doc.status == DocumentStatus.READY:
                plan_waiting_jobs(uow, document_id)
            return
        doc = uow.session.get(Document, document_id)
        assert doc is not None
    ctx.keep_leases()
    outcome: dict[str, Any] | None = None
    error: tuple[str, str] | None = None
    password = unseal(settings, doc.password_sealed) if doc.password_sealed else None
    if doc.attempts >= settings.task_max_attempts:
        error = (ErrorCode.DOCUMENT_UNREADABLE, "ingestion was interrupted too many times")
    elif doc.password_sealed and password is None:
        error = (ErrorCode.PDF_PASSWORD_INCORRECT,
                 "the password can no longer be read (the service's secret key changed)")
    else:
        try:
            # The password is forgotten after this: render every page now, in case a job
            # reads them as images later.
            started = time.monotonic()
            outcome = parse_in_child(ctx, doc, password, render_all=bool(password),
                                     progress=record_pages_parsed(ctx, document_id))
            kind = metrics.ingest_kind(doc.media_type)
            metrics.INGEST_SECONDS.labels(kind).observe(time.monotonic() - started)
            metrics.INGEST_PAGES.labels(kind).inc(len(outcome["index"]))
        except ParseError as exc:
            error = (exc.code, exc.message)
    with ctx.unit_of_work() as uow:
        doc = uow.session.get(Document, document_id)
        assert doc is not None
        if not holds(doc):
            log.info("document.lease_lost", document_id=document_id)
            return  # another worker took over: it records the outcome
        release(doc)
        doc.password_sealed = None
        if outcome is not None:
            doc.status, doc.pages_key = DocumentStatus.READY, outcome["pages_key"]
            doc.page_index, doc.pages = outcome["index"], len(outcome["index"])
            doc.pages_parsed = doc.pages
            # What the document costs in a prompt at the default detail, images included
            # (an image-only PDF used to read 0): the profile's image rule, once, here.
            doc.tokens = prompt_tokens(
                outcome["index"], lambda w, h: ctx.profile.image_tokens(w, h, "auto"))
            record_blobs(uow.session, doc.id, outcome["blobs"])
            log.info("document.ready", document_id=doc.id, pages=doc.pages, tokens=doc.tokens)
            plan_waiting_jobs(uow, document_id)
        else:
            assert error is not None
            doc.status, doc.error_code, doc.error_message = DocumentStatus.FAILED, *error
            log.info("document.failed", document_id=doc.id, code=error[0])
            fail_jobs_waiting_on(uow, document_id, f"{error[0]}: {error[1]}")


def plan_waiting_jobs(uow: UnitOfWork, document_id: str) -> None:
    """Jobs that waited for this document are planned now (each once all its documents are)."""
    now = utcnow()
    for job in jobs_waiting_on(uow.session, document_id):
        job.dispatched_at = now
        uow.send(Task.PLAN_JOB, job.id)


def ensure_page_images(ctx: WorkerContext, doc: Document) -> None:
    """Renders every page once for jobs that read pages as images (``pages_as_images``)."""
    outcome = parse_in_child(ctx, doc, render_all=True)
    with ctx.unit_of_work() as uow:
        row = uow.session.get(Document, doc.id)
        assert row is not None
        row.pages_key, row.page_index = outcome["pages_key"], outcome["index"]
        record_blobs(uow.session, doc.id, outcome["blobs"])
        doc.pages_key, doc.page_index = row.pages_key, row.page_index
