"""Thin tasks: take an id, call a pipeline function, send what it asks for after its commit."""

from __future__ import annotations

from functools import lru_cache

import redis
from celery import Task, shared_task

from service.jobs import account_limits
from service.profiles import ModelProfile, get_profile
from service.queue import TASK_QUEUES
from service.settings import get_settings
from service.storage import LocalStorage, get_storage
from service.webhooks import WebhookSender
from workers import pipeline
from workers.model import ModelClient
from workers.ratelimit import RateLimiter


@lru_cache
def _storage() -> LocalStorage:
    return get_storage()


@lru_cache
def _profile() -> ModelProfile:
    settings = get_settings()
    return get_profile(settings.model, settings.model_profiles_file or None)


@lru_cache
def _client() -> ModelClient:
    settings = get_settings()
    limits = account_limits(settings, _profile())
    limiter = None
    if limits.enabled:
        key = f"longdoc:ratelimit:{settings.resolved_base_url}:{settings.resolved_model_id}"
        limiter = RateLimiter(redis.Redis.from_url(settings.redis_url), key, limits)
    return ModelClient(settings, limiter)


@lru_cache
def _sender() -> WebhookSender:
    settings = get_settings()
    return WebhookSender(settings.webhook_allowed_networks, settings.webhook_timeout_s)


def _send(outbox: pipeline.Outbox) -> None:
    from workers.celery_app import app

    for name, arg, *rest in outbox:
        countdown = rest[0] if rest else None
        app.send_task(name, args=[arg], queue=TASK_QUEUES[name], countdown=countdown)


class PipelineTask(Task):  # type: ignore[misc]
    """Retries an unexpected error a few times (backing off), then fails what the task was for.

    Expected outcomes (a bad file, a refusing model) never raise: the pipeline records them.
    """

    abstract = True
    autoretry_for = (Exception,)
    max_retries = 3
    retry_backoff = 1
    retry_backoff_max = 60  # countdowns stay well inside the broker's visibility timeout
    retry_jitter = True
    kind = "job"

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:  # type: ignore[no-untyped-def]
        _send(pipeline.fail_after_error(self.kind, args[0], exc))


@shared_task(name="longdoc.ingest_document", base=PipelineTask, kind="document")
def ingest_document(document_id: str) -> None:
    _send(pipeline.ingest_document(document_id, get_settings(), _storage()))


@shared_task(name="longdoc.plan_job", base=PipelineTask)
def plan_job(job_id: str) -> None:
    _send(pipeline.plan_job(job_id, get_settings(), _storage(), _profile()))


@shared_task(name="longdoc.extract_chunk", base=PipelineTask, kind="chunk")
def extract_chunk(chunk_id: str) -> None:
    _send(pipeline.extract_chunk(chunk_id, get_settings(), _storage(), _profile(), _client()))


@shared_task(name="longdoc.finalize_job", base=PipelineTask)
def finalize_job(job_id: str) -> None:
    _send(pipeline.finalize_job(job_id, get_settings(), _profile(), _client()))


@shared_task(name="longdoc.deliver_webhook", autoretry_for=(Exception,), max_retries=4,
             retry_backoff=2, retry_backoff_max=60)
def deliver_webhook(delivery_id: str) -> None:
    _send(pipeline.deliver_webhook(delivery_id, get_settings(), _sender()))


@shared_task(name="longdoc.sweep")
def sweep() -> None:
    """Run by beat: sends the webhook attempts that are due."""
    _send([("longdoc.deliver_webhook", delivery_id) for delivery_id in pipeline.due_deliveries()])
