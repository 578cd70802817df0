"""Outbound webhooks: Standard Webhooks signatures and the events' bodies. Which addresses a
webhook may reach is decided in ``service.core.outbound``."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from standardwebhooks import Webhook


def signed_headers(secret: str, msg_id: str, timestamp: datetime, body: str) -> dict[str, str]:
    signature = Webhook(secret).sign(msg_id, timestamp, body)
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(timestamp.timestamp())),
            "webhook-signature": signature, "content-type": "application/json",
            "user-agent": "longdoc-webhooks/1"}


def event_body(event: str, job_view: dict[str, Any], timestamp: datetime) -> str:
    return json.dumps({"type": event, "timestamp": timestamp.isoformat(), "data": job_view})
