"""Outbound webhooks: Standard Webhooks signatures and the events' bodies. Which addresses a
webhook may reach is decided in ``service.core.outbound``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from standardwebhooks import Webhook


def signed_headers(secret: str | Sequence[str], msg_id: str, timestamp: datetime,
                   body: str) -> dict[str, str]:
    """Standard Webhooks headers; with several secrets (a rotation's grace period) the
    signature header carries one signature per secret, space-separated, as the spec allows."""
    keys = [secret] if isinstance(secret, str) else list(secret)
    signature = " ".join(Webhook(key).sign(msg_id, timestamp, body) for key in keys)
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(timestamp.timestamp())),
            "webhook-signature": signature, "content-type": "application/json",
            "user-agent": "longdoc-webhooks/1"}


def event_body(event: str, job_view: dict[str, Any], timestamp: datetime) -> str:
    return json.dumps({"type": event, "timestamp": timestamp.isoformat(), "data": job_view})
