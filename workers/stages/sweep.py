"""The sweep beat runs every few seconds: it sends the webhook attempts that are due."""

from __future__ import annotations

from sqlalchemy import select

from schemas.tasks import Task
from service.store.models import DeliveryStatus, WebhookDelivery, utcnow
from workers.context import WorkerContext


def sweep(ctx: WorkerContext, limit: int = 500) -> None:
    with ctx.unit_of_work() as uow:
        due = uow.session.scalars(
            select(WebhookDelivery.id)
            .where(WebhookDelivery.status == DeliveryStatus.PENDING,
                   WebhookDelivery.next_attempt_at <= utcnow())
            .order_by(WebhookDelivery.next_attempt_at).limit(limit))
        for delivery_id in due:
            uow.send(Task.DELIVER_WEBHOOK, delivery_id)
