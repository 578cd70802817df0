"""Celery configuration shared by the API (which only sends by task name) and the workers.

Two brokers: Redis (the default, keys under ``LONGDOC_QUEUE_PREFIX``) and RabbitMQ
(``LONGDOC_BROKER_URL=amqp://…``, one instance per vhost). On RabbitMQ the queues are quorum
queues: replicated, durable, and a consumer's unacknowledged messages go back to the queue the
moment its connection drops, so a killed worker's task is redelivered at once instead of after
Redis's visibility timeout.
"""

from __future__ import annotations

import math
from typing import Any

from celery import Celery
from celery.signals import worker_init
from kombu.connection import Connection
from kombu.entity import Exchange
from kombu.entity import Queue as KombuQueue
from kombu.transport import redis as kombu_redis

from schemas.tasks import Queue, Send, Task
from service.core.logs import log
from service.core.settings import Settings

EXCHANGE = "longdoc"


class _RedisQoS(kombu_redis.QoS):
    def restore_unacked(self, client: Any = None) -> Any:
        try:
            return super().restore_unacked(client)
        except AttributeError:
            if getattr(getattr(self.channel, "connection", None), "client", None) is not None:
                raise  # not the closed connection below: a real error stays visible
            # When Redis goes away while a worker holds unacknowledged messages, kombu (5.7)
            # closes the channel after the connection it would restore them through is gone
            # (``_connparams`` reads ``connection.client``, now None). The AttributeError gets
            # past kombu's ``ignore_errors`` and ends the worker ("Unrecoverable error"): a
            # Redis blip would take a worker with it. The messages are still in Redis's unacked
            # hash, restored after the visibility timeout; the sweep sends their work sooner.
            log.warning("queue.restore_unacked_failed", messages=len(self._delivered))
            return None


class _RedisChannel(kombu_redis.Channel):
    QoS = _RedisQoS


class RedisTransport(kombu_redis.Transport):
    """kombu's Redis transport, surviving a Redis outage with messages unacknowledged."""

    Channel = _RedisChannel


def _redis_options(settings: Settings) -> dict[str, Any]:
    return {
        "broker_transport": f"{__name__}:RedisTransport",
        "task_queues": [KombuQueue(q.value) for q in Queue],
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout_s,
            # Sweep for messages of dead workers often enough for the timeout to mean something.
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout_s // 4)),
            "unacked_restore_throttle": 1,
            "global_keyprefix": settings.resolved_queue_prefix,
            "socket_timeout": 10,
            "socket_connect_timeout": 2,
        },
        "broker_connection_timeout": 2,
    }


def _amqp_options() -> dict[str, Any]:
    # A topic exchange, not Celery's default direct one: Celery's native delayed delivery (how
    # a countdown works with quorum queues, whose consumers cannot hold ETA tasks under a
    # raised prefetch) routes a delayed message back through the queue's exchange with a
    # pattern binding, which direct exchanges do not support.
    exchange = Exchange(EXCHANGE, type="topic", durable=True)
    return {
        "task_queues": [KombuQueue(q.value, exchange, routing_key=q.value,
                                   queue_arguments={"x-queue-type": "quorum"}) for q in Queue],
        "task_default_exchange": EXCHANGE,
        "task_default_exchange_type": "topic",
        "task_default_routing_key": Queue.CPU.value,
        # A typo'd queue name fails the send instead of creating a classic queue nobody reads.
        "task_create_missing_queues": False,
        # Quorum queues refuse global QoS: the worker uses per-consumer prefetch (Celery
        # detects the quorum queues and says "Global QoS is disabled" at start).
        "worker_detect_quorum_queues": True,
        "broker_native_delayed_delivery_queue_type": "quorum",
        # Wait for the broker's confirmation of every publish: without it a refused publish
        # is lost silently (kombu's pyamqp transport).
        "broker_transport_options": {"confirm_publish": True, "connect_timeout": 2},
        # A worker whose machine vanished (no FIN) is noticed after about two missed
        # heartbeats; its tasks then come back.
        "broker_heartbeat": 30,
    }


def make_celery(settings: Settings) -> Celery:
    app = Celery("longdoc", broker=settings.resolved_broker_url)
    app.conf.update(
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
        # A send that fails is not retried here: the row is committed and the recovery sweep
        # sends it again (the database is the schedule), so a broker outage never holds up or
        # fails a request.
        task_publish_retry=False,
        worker_hijack_root_logger=False,
        task_send_sent_event=False,
        worker_send_task_events=False,
        # Periodic tasks never expire: behind a backlog longer than their interval every one
        # would, and recovery, webhook retries and the purge would stop while the load lasts.
        # Those that arrive together after a backlog do their work once
        # (``WorkerContext.periodic_due``).
        beat_schedule={
            "sweep": {"task": Task.SWEEP.value, "schedule": settings.sweep_interval_s},
            "collect-blobs": {"task": Task.COLLECT_BLOBS.value,
                              "schedule": settings.blob_gc_interval_s},
            "purge": {"task": Task.PURGE.value, "schedule": settings.purge_interval_s},
        },
        **(_amqp_options() if settings.broker_is_amqp else _redis_options(settings)),
    )
    return app


@worker_init.connect(weak=False, dispatch_uid="longdoc.declare_queues")
def _declare_every_queue(sender: Any = None, **_: Any) -> None:
    """A worker binds every task queue to the delayed-delivery exchange at start, but declares
    only the queues it consumes: the first worker to start (say, the CPU one) would fail to bind
    the model queue, and a countdown sent there would be dropped. So every worker declares them
    all first."""
    app = getattr(sender, "app", None)
    if app is None or not str(app.conf.broker_url).lower().startswith("amqp"):
        return
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        for queue in app.amqp.queues.values():
            queue.bind(channel).declare()


def check_broker(settings: Settings, timeout_s: float = 2.0) -> None:
    """Raises unless the configured broker accepts a connection (for ``/readyz``)."""
    with Connection(settings.resolved_broker_url, connect_timeout=timeout_s,
                    transport_options={"socket_timeout": timeout_s}) as connection:
        connection.connect()


class TaskQueue:
    """Sends tasks by name: all the API and the stages need of Celery."""

    def __init__(self, celery: Celery) -> None:
        self.celery = celery
        # RabbitMQ's delayed delivery (Celery's native one) counts whole seconds and refuses a
        # countdown that rounds down to zero: round up, so nothing is sent before its time.
        self.whole_seconds = str(celery.conf.broker_url).lower().startswith(("amqp", "pyamqp"))

    def send_all(self, sends: list[Send]) -> None:
        """Sends what it can; a task that cannot be sent is left to the recovery sweep (its row
        is committed and says it is waiting)."""
        for i, send in enumerate(sends):
            countdown = send.countdown
            if countdown and self.whole_seconds:
                countdown = math.ceil(countdown)
            try:
                self.celery.send_task(send.task.value, args=[send.arg],
                                      queue=send.task.queue.value, countdown=countdown)
            except Exception as exc:  # noqa: BLE001 - a broker outage, whatever the transport
                log.warning("queue.send_failed", task=send.task.value, unsent=len(sends) - i,
                            error=type(exc).__name__)
                return
