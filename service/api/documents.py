from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select

from schemas.api import DocumentList, DocumentOut, ErrorBody, ErrorDetail
from service.auth import CurrentTenant, SessionDep
from service.errors import ApiError, not_found
from service.mediatypes import sniff
from service.models import Document, new_id
from service.uploads import receive_upload

ERRORS: dict[int | str, dict] = {  # type: ignore[type-arg]
    401: {"model": ErrorBody, "description": "unauthorized"},
    404: {"model": ErrorBody, "description": "not_found"},
    422: {"model": ErrorBody, "description": "invalid_request, invalid_schema, ..."},
    413: {"model": ErrorBody, "description": "file_too_large"},
    415: {"model": ErrorBody, "description": "unsupported_media_type"},
}
router = APIRouter(prefix="/v1/documents", tags=["documents"], responses=ERRORS)


def after_cursor(session, query, model, before: str | None):  # type: ignore[no-untyped-def]
    """Keyset pagination, newest first: the rows older than the one named ``before``."""
    if not before:
        return query
    anchor = session.get(model, before)
    if anchor is None:
        raise ApiError(422, "invalid_request", "before: no such item")
    return query.where((model.created_at < anchor.created_at)
                       | ((model.created_at == anchor.created_at) & (model.id < anchor.id)))


def document_out(doc: Document) -> DocumentOut:
    error = ErrorDetail(code=doc.error_code, message=doc.error_message or "") if doc.error_code else None
    return DocumentOut(
        id=doc.id, filename=doc.filename, sha256=doc.sha256, media_type=doc.media_type,
        bytes=doc.bytes, status=doc.status, pages=doc.pages, tokens=doc.tokens, error=error,
        created_at=doc.created_at,
    )


@router.post("", status_code=201, response_model=DocumentOut,
             openapi_extra={"requestBody": {"content": {"multipart/form-data": {"schema": {
                 "type": "object", "required": ["file"],
                 "properties": {"file": {"type": "string", "format": "binary"},
                                "password": {"type": "string"}}}}}}})
async def upload_document(request: Request, tenant: CurrentTenant, session: SessionDep) -> JSONResponse:
    """Stores the file as it arrives; parsing happens later in a worker."""
    settings = request.app.state.settings
    upload, fields = await receive_upload(request, request.app.state.storage,
                                          settings.max_upload_bytes)
    media_type = sniff(upload.head)
    if media_type is None:
        raise ApiError(415, "unsupported_media_type",
                       "the file is not a PDF, PNG, JPEG, WebP, GIF, TIFF, BMP or HEIF image")
    if upload.size == 0:
        raise ApiError(422, "empty_file", "the file is empty")
    doc = Document(
        id=new_id("doc"), tenant_id=tenant.id, filename=(upload.filename or "")[:500] or None,
        sha256=upload.key, media_type=media_type, bytes=upload.size, status="processing",
        password=fields.get("password") or None,
    )
    session.add(doc)
    session.commit()
    request.app.state.queue.send("longdoc.ingest_document", doc.id)
    body = document_out(doc)
    return JSONResponse(body.model_dump(mode="json"), status_code=201,
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
