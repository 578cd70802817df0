"""What the stages work with, built once per worker process from the settings."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property

import redis
from celery import Celery

from service.core.jobs import account_limits
from service.core.profiles import ModelProfile, get_profile
from service.core.settings import Settings
from service.store.db import Database, UnitOfWork
from service.store.leases import start_renewing
from service.store.queue import TaskQueue
from service.store.storage import BlobStore, open_storage
from workers.model_client import ModelClient
from workers.ratelimit import RateLimiter
from workers.webhook_sender import WebhookSender


@dataclass
class WorkerContext:
    settings: Settings
    db: Database
    storage: BlobStore
    profile: ModelProfile
    queue: TaskQueue

    @classmethod
    def build(cls, settings: Settings, celery: Celery) -> WorkerContext:
        return cls(settings=settings, db=Database(settings.resolved_database_url),
                   storage=open_storage(settings),
                   profile=get_profile(settings.model, settings.model_profiles_file or None),
                   queue=TaskQueue(celery))

    @contextmanager
    def unit_of_work(self) -> Iterator[UnitOfWork]:
        with self.db.unit_of_work(self.queue) as uow:
            yield uow

    def keep_leases(self) -> None:
        """This process renews the leases it holds while it works (started once)."""
        start_renewing(self.db.sessionmaker, self.settings.lease_s)

    @cached_property
    def client(self) -> ModelClient:
        settings = self.settings
        limits = account_limits(settings, self.profile)
        limiter = None
        if limits.enabled:
            key = f"longdoc:ratelimit:{settings.resolved_base_url}:{settings.resolved_model_id}"
            limiter = RateLimiter(redis.Redis.from_url(settings.redis_url), key, limits)
        return ModelClient(settings, limiter)

    @cached_property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.settings.redis_url, socket_connect_timeout=2,
                                    socket_timeout=2)

    def periodic_due(self, task: str, interval_s: float) -> bool:
        """Whether a periodic task should do its work: not if one ran less than half an
        interval ago. Beat's messages wait in the queue behind whatever the worker is busy with
        and are never dropped (an expiry would skip every sweep while a backlog lasts longer
        than the interval); the stale ones that then arrive together cost a Redis call each.
        Without Redis, it runs."""
        key = f"{self.settings.resolved_queue_prefix}periodic:{task}"
        try:
            return bool(self.redis.set(key, b"1", nx=True, px=max(1, int(interval_s * 500))))
        except redis.RedisError:
            return True

    @cached_property
    def sender(self) -> WebhookSender:
        return WebhookSender(self.settings.webhook_allowed_networks, self.settings.webhook_timeout_s)
