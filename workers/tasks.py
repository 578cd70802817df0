"""Thin tasks: take an id, run a stage with the worker's context. Stages record expected
outcomes (a bad file, a refusing model) themselves; a task raises only for the unexpected."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from celery import Task as CeleryTask
from celery import current_app, shared_task

from schemas.tasks import Task
from service.core.settings import get_settings
from workers.context import WorkerContext
from workers.stages import deliver, extract, finalize, ingest, plan, sweep
from workers.stages.common import Subject, fail_after_error


@lru_cache
def context() -> WorkerContext:
    return WorkerContext.build(get_settings(), current_app)


class StageTask(CeleryTask):
    """Retries an unexpected error a few times (backing off), then fails what the task was for."""

    abstract = True
    autoretry_for = (Exception,)
    max_retries = 3
    retry_backoff = 1
    retry_backoff_max = 60  # countdowns stay well inside the broker's visibility timeout
    retry_jitter = True
    subject = Subject.JOB

    def on_failure(self, exc: BaseException, task_id: str, args: tuple[Any, ...],
                   kwargs: dict[str, Any], einfo: Any) -> None:
        fail_after_error(context(), self.subject, args[0], exc)


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


@shared_task(name=Task.DELIVER_WEBHOOK.value, autoretry_for=(Exception,), max_retries=4,
             retry_backoff=2, retry_backoff_max=60)
def deliver_webhook(delivery_id: str) -> None:
    deliver.deliver_webhook(context(), delivery_id)


@shared_task(name=Task.SWEEP.value)
def run_sweep() -> None:
    sweep.sweep(context())


@shared_task(name=Task.COLLECT_BLOBS.value)
def collect_blobs() -> None:
    sweep.collect_blobs(context())
