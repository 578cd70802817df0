"""``DELETE /v1/documents/{id}`` and ``DELETE /v1/jobs/{id}``: the tenant's data gone from the
database and from storage (``service.store.retention`` says what goes with each)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from sqlalchemy import select

from schemas.api import DocumentStatus, ErrorBody, JobOut, JobStatus
from schemas.errors import ErrorCode, LongdocError
from service.api.deps import CurrentTenant, ServicesDep, SessionDep
from service.api.errors import not_found
from service.store.dispatch import dispatch
from service.store.jobs import job_document_ids
from service.store.models import Document, Job, is_id, utcnow
from service.store.retention import (
    ROWS,
    delete_documents,
    delete_job_rows,
    documents_in_use,
    job_idle,
    job_rows,
    remove_files,
    serialize,
    settle,
)
from service.store.views import job_out

router = APIRouter()


@router.delete("/v1/documents/{document_id}", status_code=204, tags=["documents"],
               response_class=Response, responses={
                   401: {"model": ErrorBody, "description": "unauthorized"},
                   404: {"model": ErrorBody, "description": "not_found"},
                   409: {"model": ErrorBody, "description": "document_in_use: it is still being "
                         "ingested, or a queued or running job reads it"}})
def delete_document(document_id: str, tenant: CurrentTenant, session: SessionDep,
                    services: ServicesDep) -> Response:
    """Deletes the document: its row, its pages and renders, and its uploaded file (unless an
    identical file of another document still needs it). Ended jobs that read it keep its id in
    ``document_ids`` and their results."""
    doc = session.get(Document, document_id) if is_id(document_id, "doc") else None
    if doc is None or doc.tenant_id != tenant.id:
        raise not_found("document")
    session.close()
    since = time.time()
    with services.unit_of_work() as uow:
        deleted = delete_documents(uow.session, [document_id])
        if not deleted.documents:
            row = uow.session.get(Document, document_id)
            if row is None:
                raise not_found("document")  # deleted meanwhile
            if row.status == DocumentStatus.PROCESSING:
                raise LongdocError(ErrorCode.DOCUMENT_IN_USE, "the document is still being "
                                   "ingested; delete it once it is ready or failed",
                                   {"Retry-After": "2"})
            job_id = documents_in_use(uow.session, [document_id]).get(document_id, "")
            raise LongdocError(ErrorCode.DOCUMENT_IN_USE,
                               f"job {job_id} reads the document and has not ended; cancel or "
                               "delete the job, or wait for it to end")
    remove_files(services.storage, deleted.files, since)
    return Response(status_code=204)


@router.delete("/v1/jobs/{job_id}", status_code=204, tags=["jobs"], response_class=Response,
               responses={
                   202: {"model": JobOut, "description": "canceled; its data is deleted within "
                         "seconds, as soon as its calls in flight have returned"},
                   401: {"model": ErrorBody, "description": "unauthorized"},
                   404: {"model": ErrorBody, "description": "not_found"}})
def delete_job(job_id: str, tenant: CurrentTenant, session: SessionDep,
               services: ServicesDep) -> Response:
    """Deletes the job: result, chunks and their answers, model calls, events, webhook
    deliveries and their attempts. A job still queued or running is canceled first; if a call
    of it is in flight (or it has hundreds of chunks), the answer is 202 and the purge deletes
    it within seconds, once the call has returned (its usage is counted). A
    ``delete_documents`` job's documents go too."""
    job = session.get(Job, job_id) if is_id(job_id, "job") else None
    if job is None or job.tenant_id != tenant.id:
        raise not_found("job")
    session.close()
    now = utcnow()
    view: JobOut | None = None
    with services.unit_of_work() as uow:
        serialize(uow.session)
        row = uow.session.scalar(select(Job).where(Job.id == job_id).with_for_update())
        if row is None:
            raise not_found("job")  # deleted meanwhile
        if not JobStatus(row.status).ended:
            # Under the row lock, through the ORM: the cancel is in the job's event stream.
            row.status, row.finished_at = JobStatus.CANCELED, now
        row.purge_at = now
        # A large job is left to the purge, which deletes it in short transactions.
        if job_idle(uow.session, services.settings, job_id, now) and job_rows(row.chunks_total) <= ROWS:
            settle(uow.session, services.settings, row, now)
            delete_job_rows(uow.session, [row])
        else:
            view = job_out(row, job_document_ids(uow.session, job_id))
        dispatch(uow, services.settings.dispatch_window)  # its slots go to other jobs at once
    if view is not None:
        return JSONResponse(view.model_dump(mode="json"), status_code=202)
    return Response(status_code=204)
