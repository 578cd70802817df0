from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from schemas.api import DocumentFromUrl, DocumentList, DocumentOut
from schemas.errors import ErrorCode, LongdocError
from schemas.tasks import Task
from service.api.deps import CurrentTenant, Services, ServicesDep, SessionDep
from service.api.errors import not_found
from service.api.fetch import fetch_url
from service.api.idempotency import Once, key_of, remember, replay, request_hash
from service.api.routes.common import after_cursor, error_responses
from service.api.uploads import UploadedFile, parse_json, read_json_bytes, receive_upload
from service.core.mediatypes import sniff
from service.core.secrets import seal
from service.store.models import Document, DocumentStatus, is_id, new_id, utcnow
from service.store.views import document_out

router = APIRouter(prefix="/v1/documents", tags=["documents"], responses=error_responses(
    _400="invalid_multipart", _401="unauthorized", _404="not_found",
    _413="file_too_large, request_too_large", _415="unsupported_media_type",
    _422="invalid_request, empty_file, invalid_url, url_not_allowed, url_fetch_failed"))


@router.post("", status_code=201, response_model=DocumentOut,
             openapi_extra={"requestBody": {"required": True, "content": {
                 "multipart/form-data": {"schema": {
                     "type": "object", "required": ["file"],
                     "properties": {"file": {"type": "string", "format": "binary"},
                                    "password": {"type": "string", "maxLength": 4096}}}},
                 "application/json": {"schema": DocumentFromUrl.model_json_schema()}}}})
async def upload_document(request: Request, tenant: CurrentTenant,
                          services: ServicesDep) -> JSONResponse:
    """Stores the file as it arrives (multipart field ``file``), or fetches it from ``url``
    (a JSON body); parsing happens later in a worker. A refused upload leaves nothing behind."""
    settings = services.settings
    source_url = None
    key = key_of(request)
    if request.headers.get("content-type", "").startswith("application/json"):
        raw = await read_json_bytes(request, settings.max_json_bytes)
        body = parse_json(raw, DocumentFromUrl)
        once = Once(key, request_hash(settings, "url", raw)) if key else None
        if once is not None and (earlier := await _replay(services, tenant.id, once)):
            return earlier  # fetched once already: not again
        target, upload = await fetch_url(body.url, services.storage, settings.max_upload_bytes,
                                         settings.url_allowed_networks, settings.url_fetch_timeout_s)
        source_url, fields = target.url, {"password": body.password or ""}
        upload.filename = target.url.rsplit("/", 1)[-1].split("?")[0][:255] or None
    else:
        upload, fields = await receive_upload(request, services.storage, settings.max_upload_bytes)
        once = Once(key, request_hash(settings, "file", upload.sha256, upload.filename or "",
                                      fields.get("password", ""))) if key else None
    try:
        if once is not None and (earlier := await _replay(services, tenant.id, once)):
            return earlier
        if upload.size == 0:
            raise LongdocError(ErrorCode.EMPTY_FILE, "the file is empty")
        media_type = sniff(upload.head)
        if media_type is None:
            raise LongdocError(ErrorCode.UNSUPPORTED_MEDIA_TYPE,
                               "the file is not a PDF, PNG, JPEG, WebP, GIF, TIFF, BMP or HEIF image")
        password = fields.get("password") or None
        return await run_in_threadpool(_record_upload, services, tenant.id, upload, media_type,
                                       password, source_url, once)
    finally:
        upload.abort()  # nothing to remove once committed


async def _replay(services: Services, tenant_id: str, once: Once) -> JSONResponse | None:
    def read() -> JSONResponse | None:
        with services.db.session(readonly=True) as session:
            return replay(session, tenant_id, "documents", once.key, once.digest)

    return await run_in_threadpool(read)


def _record_upload(services: Services, tenant_id: str, upload: UploadedFile, media_type: str,
                   password: str | None, source_url: str | None,
                   once: Once | None) -> JSONResponse:
    try:
        doc, view = _insert_document(services, tenant_id, upload, media_type, password,
                                     source_url, once)
    except IntegrityError:
        if once is None:
            raise
        with services.db.session(readonly=True) as session:  # a concurrent retry got there first
            earlier = replay(session, tenant_id, "documents", once.key, once.digest)
        if earlier is None:
            raise
        return earlier
    return JSONResponse(view, status_code=201, headers={"Location": f"/v1/documents/{doc.id}"})


def _insert_document(services: Services, tenant_id: str, upload: UploadedFile, media_type: str,
                     password: str | None, source_url: str | None,
                     once: Once | None) -> tuple[Document, dict[str, Any]]:
    # Filed under its hash just before the row commits (a crash in between leaves a file no row
    # refers to, which the blob sweep removes), and outside the write transaction: copying a
    # large upload in S3 holds up no other writer.
    sha256 = upload.commit()
    with services.unit_of_work() as uow:
        doc = Document(
            id=new_id("doc"), tenant_id=tenant_id, filename=upload.filename or None,
            source_url=source_url,
            sha256=sha256, media_type=media_type, bytes=upload.size,
            status=DocumentStatus.PROCESSING,
            password_sealed=seal(services.settings, password) if password else None)
        doc.dispatched_at = utcnow()
        doc.purge_at = doc.dispatched_at + timedelta(seconds=services.settings.retention_seconds)
        uow.session.add(doc)
        uow.send(Task.INGEST_DOCUMENT, doc.id)
        uow.session.flush()
        view = document_out(doc).model_dump(mode="json")
        if once is not None:
            remember(uow, tenant_id, "documents", once.key, once.digest, 201, view,
                     f"/v1/documents/{doc.id}")
    return doc, view


@router.get("", response_model=DocumentList)
def list_documents(tenant: CurrentTenant, session: SessionDep,
                   limit: int = Query(50, ge=1, le=500),
                   before: str | None = Query(None, description="the next_before of the last page"),
                   ) -> DocumentList:
    """The tenant's documents, newest first."""
    query = after_cursor(session, select(Document).where(Document.tenant_id == tenant.id),
                         Document, before, tenant.id)
    rows = session.scalars(query.order_by(Document.created_at.desc(), Document.id.desc())
                           .limit(limit + 1)).all()
    items = [document_out(doc) for doc in rows[:limit]]
    return DocumentList(data=items, next_before=rows[limit - 1].id if len(rows) > limit else None)


@router.get("/{document_id}", response_model=DocumentOut)
def get_document(document_id: str, tenant: CurrentTenant, session: SessionDep) -> DocumentOut:
    doc = session.get(Document, document_id) if is_id(document_id, "doc") else None
    if doc is None or doc.tenant_id != tenant.id:
        raise not_found("document")
    return document_out(doc)
