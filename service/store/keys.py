"""Tenants and their API keys (stored as SHA-256 hashes)."""

from __future__ import annotations

import base64
import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.store.models import ApiKey, Tenant, new_id

KEY_PREFIX = "ld_"


def hash_key(key: str) -> str:
    # Keys carry 256 bits of randomness, so a fast hash is safe and lookups stay O(1).
    return hashlib.sha256(key.encode()).hexdigest()


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def create_key(session: Session, tenant_name: str) -> tuple[Tenant, str]:
    """Creates the tenant if needed and a new API key for it; returns the key in clear once."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == tenant_name))
    if tenant is None:
        tenant = Tenant(id=new_id("ten"), name=tenant_name, webhook_secret=new_webhook_secret())
        session.add(tenant)
        session.flush()
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(id=new_id("key"), tenant_id=tenant.id, key_hash=hash_key(key),
                       prefix=key[:10]))
    return tenant, key


def tenant_for_key(session: Session, key: str) -> Tenant | None:
    return session.scalar(
        select(Tenant).join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .where(ApiKey.key_hash == hash_key(key))
    )
