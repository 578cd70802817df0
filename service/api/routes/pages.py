"""The stored reading of a document's pages: what a citation's quote can be checked against (the
playground shows it beside the result)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

from fastapi import APIRouter, Path

from schemas.api import PageOut
from schemas.errors import ErrorCode, LongdocError
from service.api.deps import CurrentTenant, ServicesDep, SessionDep
from service.api.errors import not_found
from service.api.routes.common import error_responses
from service.core.pages import ExtractedPage, PageKind, load_pages
from service.store.models import Document, DocumentStatus, is_id
from service.store.storage import BlobStore

router = APIRouter(prefix="/v1/documents", tags=["documents"], responses=error_responses(
    _401="unauthorized", _404="not_found", _409="document_not_ready, document_failed"))


_RECENT: OrderedDict[str, tuple[ExtractedPage, ...]] = OrderedDict()
_RECENT_ARTIFACTS = 4


def _pages(storage: BlobStore, pages_key: str) -> tuple[ExtractedPage, ...]:
    # Artifacts are content-addressed and never change: a reader paging through one document
    # loads it once (a few recent ones are kept).
    if pages_key in _RECENT:
        _RECENT.move_to_end(pages_key)
        return _RECENT[pages_key]
    pages = tuple(load_pages(storage, pages_key))
    _RECENT[pages_key] = pages
    while len(_RECENT) > _RECENT_ARTIFACTS:
        _RECENT.popitem(last=False)
    return pages


@router.get("/{document_id}/pages/{n}", response_model=PageOut)
def get_page(document_id: str, tenant: CurrentTenant, session: SessionDep, services: ServicesDep,
             n: int = Path(ge=1, description="1-based page number")) -> PageOut:
    doc = session.get(Document, document_id) if is_id(document_id, "doc") else None
    if doc is None or doc.tenant_id != tenant.id:
        raise not_found("document")
    if doc.status == DocumentStatus.FAILED:
        raise LongdocError(ErrorCode.DOCUMENT_FAILED, "the document failed ingestion")
    if doc.status != DocumentStatus.READY or not doc.pages_key:
        raise LongdocError(ErrorCode.DOCUMENT_NOT_READY, "the document is still processing",
                           {"Retry-After": "2"})
    pages = _pages(services.storage, doc.pages_key)
    if n > len(pages):
        raise not_found(f"page {n} (the document has {len(pages)})")
    page = pages[n - 1]
    kind: Literal["text", "image", "empty"] = (
        "text" if page.kind == PageKind.TEXT else "image" if page.kind == PageKind.IMAGE else "empty")
    return PageOut(document_id=doc.id, page=n, pages=len(pages), kind=kind,
                   text=page.text if page.kind != PageKind.IMAGE else "",
                   tokens=page.text_tokens, has_image=bool(page.image))
