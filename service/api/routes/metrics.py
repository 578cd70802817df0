"""``GET /metrics``: the API's own metrics plus gauges counted when Prometheus asks.

Jobs and documents by status come from the database and queue depth from the broker, at
scrape time: every replica reports the same truth, and nothing has to keep a count in step
with the rows. A scrape stays cheap and always answers: two grouped counts on indexed status
columns and one probe per queue, each bounded by a timeout; a dependency that is down leaves
its series out (and says so in the log), never a 5xx. No API key: the scaled compose's proxy
refuses ``/metrics`` from outside, and Prometheus scrapes each replica directly.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import redis
from fastapi import APIRouter
from fastapi.responses import Response
from kombu.connection import Connection
from kombu.transport.redis import PRIORITY_STEPS
from kombu.transport.redis import Channel as RedisChannel
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select, text

from schemas.api import DocumentStatus, JobStatus
from schemas.tasks import Queue
from service import metrics
from service.api.deps import ServicesDep
from service.core.logs import log
from service.core.settings import Settings
from service.store.db import Database
from service.store.models import Document, Job

router = APIRouter(tags=["operations"])

PROBE_TIMEOUT_S = 2.0


def count_statuses(db: Database) -> list[Metric]:
    """``longdoc_jobs`` and ``longdoc_documents``: one grouped count per table on its status
    index (a few rows out), every status reported, zeros included."""
    with db.session(readonly=True) as session:
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text(f"SET LOCAL statement_timeout = {int(PROBE_TIMEOUT_S * 1000)}"))
        jobs = {status: n for status, n in session.execute(
            select(Job.status, func.count()).group_by(Job.status))}
        docs = {status: n for status, n in session.execute(
            select(Document.status, func.count()).group_by(Document.status))}
    out: list[Metric] = []
    for name, help_text, statuses, counts in (
            ("longdoc_jobs", "Jobs in each status now", JobStatus, jobs),
            ("longdoc_documents", "Documents in each status now", DocumentStatus, docs)):
        family = GaugeMetricFamily(name, help_text, labels=["status"])
        for status in statuses:
            family.add_metric([status.value], counts.get(status.value, 0))
        out.append(family)
    return out


def _redis_waiting(settings: Settings) -> dict[str, int]:
    # kombu's Redis transport keeps a queue as one list per priority step, under the
    # instance's key prefix (``kombu/transport/redis.py``: ``_q_for_pri``). Its own passive
    # declare checks the lists with an unprefixed EXISTS, so it cannot be used here.
    client = redis.Redis.from_url(settings.resolved_broker_url, socket_connect_timeout=1,
                                  socket_timeout=PROBE_TIMEOUT_S)
    try:
        prefix = settings.resolved_queue_prefix
        with client.pipeline(transaction=False) as pipe:
            for queue in Queue:
                for step in PRIORITY_STEPS:
                    pipe.llen(f"{prefix}{queue.value}{RedisChannel.sep}{step}" if step
                              else f"{prefix}{queue.value}")
            sizes = pipe.execute()
    finally:
        client.close()
    per_queue = len(PRIORITY_STEPS)
    return {queue.value: sum(sizes[i * per_queue:(i + 1) * per_queue])
            for i, queue in enumerate(Queue)}


def _amqp_waiting(settings: Settings) -> dict[str, int]:
    """Ready messages per queue from a passive declare, which RabbitMQ answers exactly
    (``rabbitmqctl list_queues`` lags for quorum queues)."""
    out = {}
    with Connection(settings.resolved_broker_url, connect_timeout=PROBE_TIMEOUT_S,
                    transport_options={"read_timeout": PROBE_TIMEOUT_S,
                                       "write_timeout": PROBE_TIMEOUT_S}) as connection:
        for queue in Queue:
            channel = connection.channel()  # a refused passive declare closes its channel
            try:
                out[queue.value] = channel.queue_declare(queue=queue.value, passive=True).message_count
            except connection.channel_errors:
                out[queue.value] = 0  # not declared yet: no worker has started, nothing waits
            finally:
                with contextlib.suppress(Exception):  # closed by the broker already
                    channel.close()
    return out


def count_waiting(settings: Settings) -> list[Metric]:
    waiting = _amqp_waiting(settings) if settings.broker_is_amqp else _redis_waiting(settings)
    family = GaugeMetricFamily("longdoc_queue_messages", "Messages waiting in the broker",
                               labels=["queue"])
    for queue, count in waiting.items():
        family.add_metric([queue], count)
    return [family]


async def _bounded(source: str, probe: Callable[[], list[Metric]]) -> list[Metric]:
    try:
        return await asyncio.wait_for(asyncio.to_thread(probe), timeout=PROBE_TIMEOUT_S + 1)
    except Exception as exc:  # noqa: BLE001 - a scrape reports what it can
        log.warning("metrics.source_unavailable", source=source, error=type(exc).__name__)
        return []


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def render(families: list[Metric]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry)


@router.get("/metrics", include_in_schema=False)
async def scrape(services: ServicesDep) -> Response:
    """Prometheus text format: the process's counters and histograms, then the gauges."""
    gauges = await asyncio.gather(
        _bounded("database", lambda: count_statuses(services.db)),
        _bounded("broker", lambda: count_waiting(services.settings)))
    body = metrics.exposition() + render([f for found in gauges for f in found])
    return Response(body, media_type=CONTENT_TYPE_LATEST)
