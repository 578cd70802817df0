"""Pieces the routers share: documented error responses and keyset pagination."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import Session

from schemas.api import ErrorBody
from schemas.errors import ErrorCode, LongdocError
from service.store.models import Document, Job, is_id

Row = TypeVar("Row", Document, Job)


def error_responses(**described: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses of a router: ``{"404": "not_found"}``."""
    return {int(status.lstrip("_")): {"model": ErrorBody, "description": codes}
            for status, codes in described.items()}


def after_cursor(session: Session, query: Select[Row], model: type[Row],
                 before: str | None, tenant_id: str) -> Select[Row]:
    """Keyset pagination, newest first: the rows older than the one named ``before`` (one of
    the tenant's own: another tenant's id is no such item)."""
    if not before:
        return query
    anchor = session.get(model, before) if is_id(before, before[:3]) else None
    if anchor is None or anchor.tenant_id != tenant_id:
        raise LongdocError(ErrorCode.INVALID_REQUEST, "before: no such item")
    return query.where((model.created_at < anchor.created_at)
                       | ((model.created_at == anchor.created_at) & (model.id < anchor.id)))
