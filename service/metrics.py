"""Prometheus metrics: the names docs/deploying.md lists (its "Metrics" table is the contract
with the Grafana dashboard), how they are recorded, and how each process serves them.

Where values live. The API is one process per replica (``longdoc api``), so its values stay in
the process (the default registry) and ``GET /metrics`` adds gauges counted at scrape time
(``service/api/routes/metrics.py``). A worker may be several processes: a prefork CPU worker
runs its tasks in children that come and go. So every worker process keeps its values in
prometheus_client's multiprocess files, in a directory private to that worker (made before
anything imports prometheus_client: ``workers/celery_app.py``), and the worker's main process
sums them for each scrape. Counters of a child that died stay in the sum (a total never goes
down); the one live gauge (calls in flight) drops a process once it is gone, whether it exited
(``worker_process_shutdown``) or was killed -9 (checked at every scrape). A restarted worker
starts from a fresh directory: Prometheus' ``rate()`` reads that as a counter reset.
prometheus.github.io/client_python/multiprocess; /work notes: research infra.md §4.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from sqlalchemy import event, inspect
from sqlalchemy.orm import Session, UOWTransaction

from schemas.api import JobStatus
from schemas.tasks import Queue, Task
from service.core.logs import log
from service.store.models import Document, Job

# `_created` series double the number of series for a start time Prometheus does not need
# (it detects counter resets itself); multiprocess mode never exports them anyway.
disable_created_metrics()

# Buckets suggested in docs/deploying.md: model calls and tasks take seconds to minutes,
# rate-limiter waits milliseconds to a minute; HTTP answers are mostly milliseconds (long
# polls and event streams land in the top buckets, under their own route).
CALL_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
INGEST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)

# The client appends `_total` to a counter's name.
HTTP_REQUESTS = Counter("longdoc_http_requests", "HTTP requests answered",
                        ["method", "route", "status"])
HTTP_SECONDS = Histogram("longdoc_http_request_duration_seconds", "Time to answer a request",
                         ["method", "route"], buckets=HTTP_BUCKETS)
UPLOAD_BYTES = Counter("longdoc_upload_bytes", "Bytes of uploads accepted")
JOBS_FINISHED = Counter("longdoc_jobs_finished", "Jobs that reached an end state", ["status"])
TASKS = Counter("longdoc_tasks", "Celery tasks finished", ["task", "outcome"])
TASK_SECONDS = Histogram("longdoc_task_duration_seconds", "Run time of a task", ["task"],
                         buckets=CALL_BUCKETS)
INGEST_PAGES = Counter("longdoc_ingest_pages", "Pages parsed and counted", ["kind"])
INGEST_SECONDS = Histogram("longdoc_ingest_duration_seconds",
                           "One document from parse start to pages artifact", ["kind"],
                           buckets=INGEST_BUCKETS)
CALLS_IN_FLIGHT = Gauge("longdoc_model_calls_in_flight",
                        "Requests sent to the model and not answered yet", ["model"],
                        multiprocess_mode="livesum")
CALL_SECONDS = Histogram("longdoc_model_call_duration_seconds", "One HTTP call to the model",
                         ["model", "outcome"], buckets=CALL_BUCKETS)
RETRIES = Counter("longdoc_model_retries", "Model calls retried", ["model", "reason"])
RATE_LIMITED = Counter("longdoc_model_rate_limited", "HTTP 429 answers, retried or not", ["model"])
TOKENS = Counter("longdoc_model_tokens", "Tokens the model reported", ["model", "kind"])
COST = Counter("longdoc_model_cost_dollars", "US dollars at the profile's prices", ["model"])
RATELIMIT_WAIT = Histogram("longdoc_ratelimit_wait_seconds",
                           "Time a call waited for the shared RPM/TPM budget", ["model"],
                           buckets=WAIT_BUCKETS)
WEBHOOK_ATTEMPTS = Counter("longdoc_webhook_attempts", "Webhook delivery attempts", ["outcome"])

CALL_OUTCOMES = ("ok", "length", "rate_limited", "server_error", "timeout", "connection_error",
                 "client_error")
TASK_OUTCOMES = ("succeeded", "failed", "retried")
WEBHOOK_OUTCOMES = ("delivered", "rejected", "gone", "timeout", "unreachable", "blocked")
INGEST_KINDS = ("pdf", "image")
TOKEN_KINDS = ("prompt", "cached", "completion")
FINISHED = tuple(s.value for s in JobStatus if s.ended)


# --- recording ------------------------------------------------------------------------------

def ingest_kind(media_type: str) -> str:
    return "pdf" if media_type == "application/pdf" else "image"


def webhook_outcome(status_code: int | None, failure: str | None) -> str:
    """An attempt as ``longdoc_webhook_attempts_total`` counts it (docs/deploying.md)."""
    if status_code is not None:
        if 200 <= status_code < 300:
            return "delivered"
        return "gone" if status_code == 410 else "rejected"
    return failure if failure in WEBHOOK_OUTCOMES else "unreachable"


def task_outcome(state: str | None) -> str:
    """Celery's task state after a run (``task_postrun``) as an outcome label."""
    if state == "SUCCESS":
        return "succeeded"
    return "retried" if state == "RETRY" else "failed"


_FINISHED_KEY = "longdoc.metrics.finished"
_UPLOADED_KEY = "longdoc.metrics.uploaded"


def _ended_now(job: Job, new: bool) -> str | None:
    """The end state this flush gives the job, if it ends in it (and did not end before)."""
    if not JobStatus(job.status).ended:
        return None
    if new:
        return str(job.status)
    history = inspect(job).attrs["status"].history
    if not history.added or any(JobStatus(s).ended for s in history.deleted or ()):
        return None
    return str(job.status)


# Jobs end in many places (a stage, the sweep, the cancel route) and uploads in two (a file, a
# URL): rather than a counter call in each, every session reports what its commit made true.
# Counted after the commit, so a rolled-back end or upload never counts.
@event.listens_for(Session, "after_flush")
def _note_ends_and_uploads(session: Session, _ctx: UOWTransaction) -> None:
    # In after_flush, `new`, `dirty` and attribute history still show what this flush wrote.
    new = set(session.new)
    for obj in [*session.new, *session.dirty]:
        if isinstance(obj, Job):
            ended = _ended_now(obj, obj in new)
            if ended is not None:
                session.info.setdefault(_FINISHED_KEY, {})[obj.id] = ended
        elif isinstance(obj, Document) and obj in new:
            session.info[_UPLOADED_KEY] = session.info.get(_UPLOADED_KEY, 0) + (obj.bytes or 0)


@event.listens_for(Session, "after_commit")
def _count_committed(session: Session) -> None:
    finished: dict[str, str] = session.info.pop(_FINISHED_KEY, {})
    for status in finished.values():
        JOBS_FINISHED.labels(status).inc()
    uploaded = session.info.pop(_UPLOADED_KEY, 0)
    if uploaded:
        UPLOAD_BYTES.inc(uploaded)


@event.listens_for(Session, "after_rollback")
def _forget_rolled_back(session: Session) -> None:
    session.info.pop(_FINISHED_KEY, None)
    session.info.pop(_UPLOADED_KEY, None)


def start_series(queues: Iterable[str], model: str, api: bool = False) -> None:
    """Creates every series a process will report at zero, so a dashboard sees 0 rather than
    no data (and a metric's name is in the first scrape). Labels stay the small fixed sets
    of docs/deploying.md."""
    for status in FINISHED:
        JOBS_FINISHED.labels(status)
    for task in Task:
        if task.queue.value in queues:
            for outcome in TASK_OUTCOMES:
                TASKS.labels(task.value, outcome)
            TASK_SECONDS.labels(task.value)
    if Queue.CPU.value in queues:
        for kind in INGEST_KINDS:
            INGEST_PAGES.labels(kind)
            INGEST_SECONDS.labels(kind)
    if Queue.MODEL.value in queues:
        CALLS_IN_FLIGHT.labels(model)
        for outcome in CALL_OUTCOMES:
            CALL_SECONDS.labels(model, outcome)
            if outcome != "ok":
                RETRIES.labels(model, outcome)
        RATE_LIMITED.labels(model)
        for kind in TOKEN_KINDS:
            TOKENS.labels(model, kind)
        COST.labels(model)
        RATELIMIT_WAIT.labels(model)
        for outcome in WEBHOOK_OUTCOMES:
            WEBHOOK_ATTEMPTS.labels(outcome)
    if api:
        UPLOAD_BYTES.inc(0)


# --- serving --------------------------------------------------------------------------------

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
DIR_PREFIX = "longdoc-metrics-"
_LIVE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def forget_dead_processes(path: str) -> int:
    """Drops the live gauges of processes that are gone without saying so (kill -9 of a prefork
    child: no shutdown hook runs). Their counters and histograms stay. Returns how many."""
    dead = set()
    for name in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        match = _LIVE_FILE.search(name)
        if match and not _alive(int(match.group(1))):
            dead.add(int(match.group(1)))
    for pid in dead:
        multiprocess.mark_process_dead(pid, path)
    return len(dead)


class _LiveSum(Collector):
    """The worker's processes summed from their files, after forgetting the dead ones."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.files = multiprocess.MultiProcessCollector(None, path)

    def collect(self) -> Iterator[Metric]:
        forget_dead_processes(self.path)
        yield from self.files.collect()


_registry: CollectorRegistry | None = None


def registry() -> CollectorRegistry:
    """What this process exports: its own values, or with ``PROMETHEUS_MULTIPROC_DIR`` set (a
    worker; an API an operator runs with several uvicorn workers) every process's."""
    global _registry
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return REGISTRY
    if _registry is None:
        _registry = CollectorRegistry()
        _registry.register(_LiveSum(path))
    return _registry


def exposition() -> bytes:
    return generate_latest(registry())


def remove_stale_dirs(parent: str | None = None) -> int:
    """Removes the multiprocess directories of workers that died without cleaning up (kill -9):
    each is named after the pid of the worker that made it."""
    removed = 0
    for path in glob.glob(os.path.join(parent or tempfile.gettempdir(), f"{DIR_PREFIX}*-*")):
        match = re.search(rf"{DIR_PREFIX}(\d+)-[^/]*$", path)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed


def serve_worker_metrics(host: str, port: int) -> Any:
    """The worker's ``/metrics`` on ``host:port`` (a thread of the main process); None when the
    port is 0 or taken: a worker that cannot export metrics still works, and says so."""
    if not port:
        return None
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry())
    except OSError as exc:
        log.error("metrics.server_failed", host=host, port=port, error=str(exc))
        return None
    log.info("metrics.serving", host=host, port=port)
    return server
