"""Verify a longdoc webhook in your receiver and read it typed.

    event = longdoc.webhooks.verify(request.body, request.headers, "whsec_…")
    if event.type == "job.succeeded" and event.result is not None:
        save(event.result.data)

Signatures are checked by the Standard Webhooks reference library (id, timestamp within five
minutes, HMAC-SHA256 with your tenant's secret). ``job.succeeded`` carries the result when it is
small enough; above the server's cap it says ``result_included: false`` and gives ``result_url``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from standardwebhooks import Webhook, WebhookVerificationError

from longdoc.errors import LongdocError
from schemas.api import JobOut


class InvalidWebhook(LongdocError):
    """The body or its signature headers do not verify with the secret: do not trust it."""


class WebhookResult(BaseModel):
    data: dict[str, Any]
    warnings: list[Any] = []
    sources: dict[str, list[dict[str, Any]]] | None = None


class WebhookJob(JobOut):
    """The job as ``GET /v1/jobs/{id}`` shows it, plus where (or what) its result is."""

    model_config = ConfigDict(extra="allow")

    result_url: str | None = None
    result: WebhookResult | None = None
    result_included: bool | None = None


class WebhookEvent(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str  # job.succeeded | job.failed
    timestamp: datetime
    data: WebhookJob

    @property
    def job(self) -> WebhookJob:
        return self.data

    @property
    def result(self) -> WebhookResult | None:
        """The extracted JSON when the event carries it (``job.succeeded`` under the size cap)."""
        return self.data.result


def verify(body: bytes | str, headers: Mapping[str, str], secret: str) -> WebhookEvent:
    """The verified event, or ``InvalidWebhook``. Pass the body exactly as received."""
    try:
        Webhook(secret).verify(body, dict(headers.items()), json_parse=False)
    except WebhookVerificationError as exc:
        raise InvalidWebhook(f"webhook signature does not verify: {exc}") from None
    return WebhookEvent.model_validate_json(body)
