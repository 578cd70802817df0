"""Webhook delivery: claim the delivery, sign, post, record the attempt, schedule the next."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, update

from schemas.tasks import Task
from service import metrics
from service.core.logs import log
from service.core.webhooks import signed_headers
from service.store.keys import signing_secrets
from service.store.models import (
    DeliveryStatus,
    Tenant,
    WebhookAttempt,
    WebhookDelivery,
    utcnow,
)
from workers.context import WorkerContext


def _jittered(seconds: float) -> float:
    return seconds * random.uniform(0.9, 1.1)


def deliver_webhook(ctx: WorkerContext, delivery_id: str) -> None:
    settings = ctx.settings
    lease = timedelta(seconds=settings.webhook_timeout_s + 30)
    with ctx.unit_of_work() as uow:
        # Claim the delivery: only one worker sends an attempt, however the task arrived.
        now = utcnow()
        claimed = cast(CursorResult[Any], uow.session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id,
                   WebhookDelivery.status == DeliveryStatus.PENDING,
                   WebhookDelivery.next_attempt_at <= now)
            .values(next_attempt_at=now + lease))).rowcount
        if not claimed:
            return
        delivery = uow.session.get(WebhookDelivery, delivery_id)
        tenant = uow.session.get(Tenant, delivery.tenant_id) if delivery else None
        assert delivery is not None and tenant is not None
        url, payload, secrets = delivery.url, delivery.payload, signing_secrets(tenant)
    sent_at = utcnow()
    outcome = ctx.sender.send(url, signed_headers(secrets, delivery_id, sent_at, payload), payload)
    metrics.WEBHOOK_ATTEMPTS.labels(metrics.webhook_outcome(outcome.status_code,
                                                            outcome.failure)).inc()
    with ctx.unit_of_work() as uow:
        delivery = uow.session.get(WebhookDelivery, delivery_id)
        if delivery is None:
            return  # its job was deleted while the attempt was on its way
        uow.session.add(WebhookAttempt(delivery_id=delivery_id, attempted_at=sent_at,
                                       status_code=outcome.status_code, error=outcome.error,
                                       duration_ms=outcome.duration_ms))
        delivery.attempts += 1
        delivery.last_status_code = outcome.status_code
        code = outcome.status_code or 0
        if 200 <= code < 300:
            delivery.status, delivery.next_attempt_at = DeliveryStatus.DELIVERED, None
        elif code == 410:  # the receiver said stop
            delivery.status, delivery.next_attempt_at = DeliveryStatus.DISABLED, None
        elif not outcome.retry or delivery.attempts >= len(settings.webhook_retry_schedule):
            delivery.status, delivery.next_attempt_at = DeliveryStatus.FAILED, None
        else:
            delay = _jittered(settings.webhook_retry_schedule[delivery.attempts])
            delivery.next_attempt_at = utcnow() + timedelta(seconds=delay)
            # Short waits ride on a countdown (kept well inside the broker's visibility timeout);
            # longer ones are found by the beat sweep.
            if delay <= min(60, settings.visibility_timeout_s / 2):
                uow.send(Task.DELIVER_WEBHOOK, delivery_id, delay)
        log.info("webhook.attempt", delivery_id=delivery_id, status_code=outcome.status_code,
                 error=outcome.error, attempts=delivery.attempts, state=delivery.status)
