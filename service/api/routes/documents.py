from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select

from schemas.api import DocumentList, DocumentOut
from schemas.errors import ErrorCode, LongdocError
from schemas.tasks import Task
from service.api.deps import CurrentTenant, ServicesDep, SessionDep, UnitOfWorkDep
from service.api.errors import not_found
from service.api.routes.common import after_cursor, error_responses
from service.api.uploads import receive_upload
from service.core.mediatypes import sniff
from service.store.models import Document, DocumentStatus, new_id
from service.store.views import document_out

router = APIRouter(prefix="/v1/documents", tags=["documents"], responses=error_responses(
    _400="invalid_multipart", _401="unauthorized", _404="not_found",
    _413="file_too_large", _415="unsupported_media_type", _422="invalid_request, empty_file"))


@router.post("", status_code=201, response_model=DocumentOut,
             openapi_extra={"requestBody": {"content": {"multipart/form-data": {"schema": {
                 "type": "object", "required": ["file"],
                 "properties": {"file": {"type": "string", "format": "binary"},
                                "password": {"type": "string"}}}}}}})
async def upload_document(request: Request, tenant: CurrentTenant, uow: UnitOfWorkDep,
                          services: ServicesDep) -> JSONResponse:
    """Stores the file as it arrives; parsing happens later in a worker."""
    upload, fields = await receive_upload(request, services.storage,
                                          services.settings.max_upload_bytes)
    media_type = sniff(upload.head)
    if media_type is None:
        raise LongdocError(ErrorCode.UNSUPPORTED_MEDIA_TYPE,
                           "the file is not a PDF, PNG, JPEG, WebP, GIF, TIFF, BMP or HEIF image")
    if upload.size == 0:
        raise LongdocError(ErrorCode.EMPTY_FILE, "the file is empty")
    doc = Document(
        id=new_id("doc"), tenant_id=tenant.id, filename=(upload.filename or "")[:500] or None,
        sha256=upload.key, media_type=media_type, bytes=upload.size,
        status=DocumentStatus.PROCESSING, password=fields.get("password") or None,
    )
    uow.session.add(doc)
    uow.send(Task.INGEST_DOCUMENT, doc.id)
    uow.commit()
    return JSONResponse(document_out(doc).model_dump(mode="json"), status_code=201,
                        headers={"Location": f"/v1/documents/{doc.id}"})


@router.get("", response_model=DocumentList)
def list_documents(tenant: CurrentTenant, session: SessionDep,
                   limit: int = Query(50, ge=1, le=500),
                   before: str | None = Query(None, description="the next_before of the last page"),
                   ) -> DocumentList:
    """The tenant's documents, newest first."""
    query = after_cursor(session, select(Document).where(Document.tenant_id == tenant.id),
                         Document, before)
    rows = session.scalars(query.order_by(Document.created_at.desc(), Document.id.desc())
                           .limit(limit + 1)).all()
    items = [document_out(doc) for doc in rows[:limit]]
    return DocumentList(data=items, next_before=rows[limit - 1].id if len(rows) > limit else None)


@router.get("/{document_id}", response_model=DocumentOut)
def get_document(document_id: str, tenant: CurrentTenant, session: SessionDep) -> DocumentOut:
    doc = session.get(Document, document_id)
    if doc is None or doc.tenant_id != tenant.id:
        raise not_found("document")
    return document_out(doc)
