"""Celery configuration shared by the API (which only sends by task name) and the workers."""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from service.settings import Settings, get_settings

CPU_QUEUE = "cpu"
MODEL_QUEUE = "model"

TASK_QUEUES = {
    "longdoc.ingest_document": CPU_QUEUE,
    "longdoc.plan_job": CPU_QUEUE,
    "longdoc.extract_chunk": MODEL_QUEUE,
    "longdoc.finalize_job": MODEL_QUEUE,
    "longdoc.deliver_webhook": MODEL_QUEUE,
    "longdoc.sweep": CPU_QUEUE,
}


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("longdoc", broker=settings.redis_url)
    app.conf.update(
        task_queues=[Queue(CPU_QUEUE), Queue(MODEL_QUEUE)],
        task_default_queue=CPU_QUEUE,
        task_routes={name: {"queue": queue} for name, queue in TASK_QUEUES.items()},
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        # Reliability (DESIGN §5): a task is acknowledged after it ran, and a task whose
        # worker died is given back to the queue; attempt counters in the DB end poison pills.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            # Sweep for messages of dead workers often enough for the timeout to mean something.
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout_s // 4)),
            "unacked_restore_throttle": 1,
            "global_keyprefix": settings.resolved_queue_prefix,
            "socket_timeout": 10,
            "socket_connect_timeout": 5,
        },
        worker_hijack_root_logger=False,
        task_send_sent_event=False,
        worker_send_task_events=False,
        beat_schedule={
            "sweep": {"task": "longdoc.sweep", "schedule": settings.webhook_sweep_interval_s},
        },
    )
    return app


class TaskQueue:
    """What the API needs of Celery: send a task by name, after the commit."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.celery = make_celery(settings)

    def send(self, name: str, *args: object) -> None:
        self.celery.send_task(name, args=list(args), queue=TASK_QUEUES[name])
