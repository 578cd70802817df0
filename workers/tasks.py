"""Thin tasks: take an id, run a stage with the worker's context. Stages record expected
outcomes (a bad file, a refusing model) themselves; a task raises only for the unexpected, and
then its row is held back and retried by the recovery sweep, not by Celery (a retry Celery
cannot publish while the broker is down would be lost)."""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Any

from celery import Task as CeleryTask
from celery import current_app, shared_task
from celery.signals import task_postrun, task_prerun

from schemas.tasks import Task
from service import metrics
from service.core.settings import get_settings
from workers.context import WorkerContext
from workers.stages import deliver, extract, finalize, ingest, plan, sweep
from workers.stages.common import Subject, record_failure


@lru_cache
def context() -> WorkerContext:
    return WorkerContext.build(get_settings(), current_app)


_started: dict[str, float] = {}  # task id -> when it started (threads pool: many at once)


@task_prerun.connect
def _task_started(task_id: str | None = None, **_: Any) -> None:
    if task_id is not None:
        _started[task_id] = time.monotonic()


@task_postrun.connect
def _task_ended(task_id: str | None = None, task: Any = None, state: str | None = None,
                **_: Any) -> None:
    started = _started.pop(task_id or "", None)
    name = getattr(task, "name", None)
    if name is None:
        return
    metrics.TASKS.labels(name, metrics.task_outcome(state)).inc()
    if started is not None:
        metrics.TASK_SECONDS.labels(name).observe(time.monotonic() - started)


class StageTask(CeleryTask):
    """An unexpected error holds the row back for a while (the sweep sends it again) and, after
    ``LONGDOC_TASK_MAX_ATTEMPTS``, fails what the task was for."""

    abstract = True
    subject = Subject.JOB

    def on_failure(self, exc: BaseException, task_id: str, args: tuple[Any, ...],
                   kwargs: dict[str, Any], einfo: Any) -> None:
        record_failure(context(), self.subject, args[0], exc)


@shared_task(name=Task.INGEST_DOCUMENT.value, base=StageTask, subject=Subject.DOCUMENT)
def ingest_document(document_id: str) -> None:
    ingest.ingest_document(context(), document_id)


@shared_task(name=Task.PLAN_JOB.value, base=StageTask)
def plan_job(job_id: str) -> None:
    plan.plan_job(context(), job_id)


@shared_task(name=Task.EXTRACT_CHUNK.value, base=StageTask, subject=Subject.CHUNK)
def extract_chunk(chunk_id: str) -> None:
    extract.extract_chunk(context(), chunk_id)


@shared_task(name=Task.FINALIZE_JOB.value, base=StageTask)
def finalize_job(job_id: str) -> None:
    finalize.finalize_job(context(), job_id)


@shared_task(name=Task.DELIVER_WEBHOOK.value)
def deliver_webhook(delivery_id: str) -> None:
    # A delivery that raised keeps its claim until it lapses; the sweep sends it again.
    deliver.deliver_webhook(context(), delivery_id)


@shared_task(name=Task.SWEEP.value)
def run_sweep() -> None:
    ctx = context()
    if ctx.periodic_due(Task.SWEEP, ctx.settings.sweep_interval_s):
        sweep.sweep(ctx)


@shared_task(name=Task.COLLECT_BLOBS.value)
def collect_blobs() -> None:
    ctx = context()
    if ctx.periodic_due(Task.COLLECT_BLOBS, ctx.settings.blob_gc_interval_s):
        sweep.collect_blobs(ctx)


@shared_task(name=Task.PURGE.value)
def purge() -> None:
    ctx = context()
    if ctx.periodic_due(Task.PURGE, ctx.settings.purge_interval_s):
        sweep.purge(ctx)
