"""Secrets kept for a while must never sit in clear in the database, the broker or the logs:
they are encrypted with a key from the settings (Fernet: AES-128-CBC + HMAC-SHA256, from the
`cryptography` package)."""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken

from service.core.settings import Settings


def _fernet(settings: Settings) -> Fernet:
    # Any secret string works as a setting: it is stretched to the 32 bytes Fernet needs.
    digest = hashlib.sha256(settings.resolved_secret_key).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def seal(settings: Settings, value: str) -> str:
    return _fernet(settings).encrypt(value.encode()).decode()


def unseal(settings: Settings, token: str) -> str | None:
    """The clear value, or None when the key changed since it was sealed."""
    try:
        return _fernet(settings).decrypt(token.encode()).decode()
    except InvalidToken:
        return None
