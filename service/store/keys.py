"""Tenants, their API keys (stored as SHA-256 hashes) and webhook secrets, and their rotation.

A key or secret is shown once, when it is made. Rotating one keeps the old one working for a
grace period (default 24 h): clients and receivers switch over without a moment where nothing
works. During a webhook secret's grace period every delivery carries a signature made with each
secret (Standard Webhooks allows several), so a receiver verifies with whichever it has.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from service.store.models import ApiKey, Tenant, new_id, utcnow

KEY_PREFIX = "ld_"
DEFAULT_GRACE = timedelta(hours=24)
LIMITS = ("max_concurrent_jobs", "max_pages_per_day", "max_tokens_per_day", "max_usd_per_month")


class TenantError(Exception):
    """A tenant command that cannot be done (no such tenant, a name taken): said to the operator."""


def hash_key(key: str) -> str:
    # Keys carry 256 bits of randomness, so a fast hash is safe and lookups stay O(1).
    return hashlib.sha256(key.encode()).hexdigest()


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _new_key(session: Session, tenant: Tenant) -> str:
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(id=new_id("key"), tenant_id=tenant.id, key_hash=hash_key(key),
                       prefix=key[:10]))
    return key


def find_tenant(session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        raise TenantError(f"no tenant named {name!r} (longdoc tenants list)")
    return tenant


def create_tenant(session: Session, name: str) -> tuple[Tenant, str]:
    """A new tenant with its first API key; returns the key in clear, once."""
    if session.scalar(select(Tenant.id).where(Tenant.name == name)) is not None:
        raise TenantError(f"a tenant named {name!r} exists (longdoc tenants rotate-key makes "
                          "a new key)")
    tenant = Tenant(id=new_id("ten"), name=name, webhook_secret=new_webhook_secret())
    session.add(tenant)
    session.flush()
    return tenant, _new_key(session, tenant)


def create_key(session: Session, tenant_name: str) -> tuple[Tenant, str]:
    """Creates the tenant if needed and a new API key for it; returns the key in clear once."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == tenant_name))
    if tenant is None:
        return create_tenant(session, tenant_name)
    return tenant, _new_key(session, tenant)


def rotate_key(session: Session, name: str, grace: timedelta = DEFAULT_GRACE,
               now: datetime | None = None) -> tuple[Tenant, str, datetime]:
    """A new key for the tenant; its other keys stop working after ``grace`` (at once for 0;
    a key already due to expire sooner keeps its earlier end). Returns the key in clear once
    and when the old ones expire."""
    now = now or utcnow()
    tenant = find_tenant(session, name)
    until = now + grace
    for key in session.scalars(select(ApiKey).where(
            ApiKey.tenant_id == tenant.id,
            or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > until))):
        key.expires_at = until
    return tenant, _new_key(session, tenant), until


def rotate_webhook_secret(session: Session, name: str, grace: timedelta = DEFAULT_GRACE,
                          now: datetime | None = None) -> tuple[Tenant, datetime]:
    """A new webhook secret; deliveries are signed with the old one as well until the grace
    period ends."""
    now = now or utcnow()
    tenant = find_tenant(session, name)
    tenant.previous_webhook_secret = tenant.webhook_secret if grace.total_seconds() > 0 else None
    tenant.previous_webhook_secret_until = now + grace if grace.total_seconds() > 0 else None
    tenant.webhook_secret = new_webhook_secret()
    return tenant, now + grace


def signing_secrets(tenant: Tenant, now: datetime | None = None) -> list[str]:
    """The secrets a delivery is signed with now: the current one, and the previous one during
    its grace period."""
    now = now or utcnow()
    previous = tenant.previous_webhook_secret
    until = tenant.previous_webhook_secret_until
    return [tenant.webhook_secret, *([previous] if previous and until and until > now else [])]


def set_limits(session: Session, name: str, limits: dict[str, float | None]) -> Tenant:
    """Sets the named limits (None removes one); limits not named stay as they are."""
    tenant = find_tenant(session, name)
    for field, value in limits.items():
        if field not in LIMITS:
            raise TenantError(f"unknown limit {field}")
        setattr(tenant, field, value)
    return tenant


@dataclass(frozen=True)
class KeyInfo:
    prefix: str
    created_at: datetime
    expires_at: datetime | None


def keys_of(session: Session, tenant_id: str, now: datetime | None = None) -> list[KeyInfo]:
    """The tenant's keys that still work (their first characters only)."""
    now = now or utcnow()
    return [KeyInfo(k.prefix, k.created_at, k.expires_at) for k in session.scalars(
        select(ApiKey).where(ApiKey.tenant_id == tenant_id,
                             or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now))
        .order_by(ApiKey.created_at))]


def tenant_for_key(session: Session, key: str) -> Tenant | None:
    return session.scalar(
        select(Tenant).join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .where(ApiKey.key_hash == hash_key(key),
               or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > utcnow()))
    )
