"""What beat runs: every few seconds, the webhook attempts that are due; now and then, the
stored files no row refers to."""

from __future__ import annotations

from sqlalchemy import select

from schemas.tasks import Task
from service.store.blobs import collect_unreferenced
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


def collect_blobs(ctx: WorkerContext) -> None:
    collect_unreferenced(ctx.db, ctx.storage, ctx.settings.blob_gc_grace_s)
