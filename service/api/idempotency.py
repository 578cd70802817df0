"""``Idempotency-Key`` on the POSTs that create (as Stripe does): a retry with the same key and
body gets the original response, the same key with another body gets 422
``idempotency_key_reused``. Keys are per tenant and endpoint, kept ``LONGDOC_IDEMPOTENCY_TTL_S``
(a day); the recovery sweep forgets older ones.

The key's row is written in the transaction that creates the resource, so two concurrent
requests with one key cannot both create: the second fails on the unique key and answers with
the first's response."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from schemas.errors import ErrorCode, LongdocError
from service.core.settings import Settings
from service.store.db import UnitOfWork
from service.store.models import IdempotencyKey, utcnow

HEADER = "idempotency-key"
MAX_KEY = 255


@dataclass(frozen=True)
class Once:
    """A request made with an Idempotency-Key: the key and the keyed hash of its body."""

    key: str
    digest: str


def key_of(request: Request) -> str | None:
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not key or len(key) > MAX_KEY or not all(32 <= ord(c) < 127 for c in key):
        raise LongdocError(ErrorCode.INVALID_REQUEST,
                           f"Idempotency-Key must be 1 to {MAX_KEY} printable ASCII characters")
    return key


def request_hash(settings: Settings, *parts: bytes | str) -> str:
    """Keyed, so a stored hash says nothing about what was sent (a PDF password, say)."""
    mac = hmac.new(settings.resolved_secret_key, digestmod=hashlib.sha256)
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        mac.update(len(data).to_bytes(8, "big") + data)
    return mac.hexdigest()


def replay(session: Session, tenant_id: str, endpoint: str, key: str,
           digest: str, ttl_s: float = 86400.0) -> JSONResponse | None:
    row = session.scalar(select(IdempotencyKey).where(
        IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.endpoint == endpoint,
        IdempotencyKey.key == key))
    if row is None:
        return None
    if row.created_at < utcnow() - timedelta(seconds=ttl_s):
        session.delete(row)  # expired (the sweep had not got to it): the key is free again
        session.flush()
        return None
    if not hmac.compare_digest(row.request_hash, digest):
        raise LongdocError(ErrorCode.IDEMPOTENCY_KEY_REUSED,
                           "this Idempotency-Key was used with another request body; use a new "
                           "key for a new request")
    headers = {"Idempotent-Replayed": "true"}
    location = row.response.get("location")
    if location:
        headers["Location"] = location
    return JSONResponse(row.response["body"], status_code=row.status_code, headers=headers)


def remember(uow: UnitOfWork, tenant_id: str, endpoint: str, key: str, digest: str,
             status: int, body: dict[str, Any], location: str | None) -> None:
    uow.session.add(IdempotencyKey(tenant_id=tenant_id, endpoint=endpoint, key=key,
                                   request_hash=digest, status_code=status,
                                   response={"body": body, "location": location}))
