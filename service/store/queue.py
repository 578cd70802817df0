"""Celery configuration shared by the API (which only sends by task name) and the workers."""

from __future__ import annotations

from celery import Celery
from kombu.entity import Queue as KombuQueue

from schemas.tasks import Queue, Send, Task
from service.core.logs import log
from service.core.settings import Settings


def make_celery(settings: Settings) -> Celery:
    app = Celery("longdoc", broker=settings.redis_url)
    app.conf.update(
        task_queues=[KombuQueue(q.value) for q in Queue],
        task_default_queue=Queue.CPU.value,
        task_routes={task.value: {"queue": task.queue.value} for task in Task},
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
            "socket_connect_timeout": 2,
        },
        # A send that fails is not retried here: the row is committed and the recovery sweep
        # sends it again (the database is the schedule), so a broker outage never holds up or
        # fails a request.
        task_publish_retry=False,
        broker_connection_timeout=2,

        worker_hijack_root_logger=False,
        task_send_sent_event=False,
        worker_send_task_events=False,
        beat_schedule={
            "sweep": {"task": Task.SWEEP.value, "schedule": settings.sweep_interval_s},
            "collect-blobs": {"task": Task.COLLECT_BLOBS.value,
                              "schedule": settings.blob_gc_interval_s},
            "purge": {"task": Task.PURGE.value, "schedule": settings.purge_interval_s},
        },
    )
    return app


class TaskQueue:
    """Sends tasks by name: all the API and the stages need of Celery."""

    def __init__(self, celery: Celery) -> None:
        self.celery = celery

    def send_all(self, sends: list[Send]) -> None:
        """Sends what it can; a task that cannot be sent is left to the recovery sweep (its row
        is committed and says it is waiting)."""
        for i, send in enumerate(sends):
            try:
                self.celery.send_task(send.task.value, args=[send.arg],
                                      queue=send.task.queue.value, countdown=send.countdown)
            except Exception as exc:  # noqa: BLE001 - a broker outage, whatever the transport
                log.warning("queue.send_failed", task=send.task.value, unsent=len(sends) - i,
                            error=type(exc).__name__)
                return
