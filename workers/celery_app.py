"""The Celery app of the workers and beat: the shared configuration, and the tasks module."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from celery.signals import (
    worker_init,
    worker_process_init,
    worker_shutdown,
    worker_shutting_down,
)

from schemas.tasks import Queue
from service.core.logs import configure_logging, log
from service.core.settings import get_settings
from service.store.db import Database
from service.store.leases import hand_back
from service.store.queue import make_celery

os.umask(0o077)  # stored files and page renders are the service user's alone
settings = get_settings()
settings.ensure_data_dir()
configure_logging(settings.log_level)
app = make_celery(settings)
app.conf.include = ["workers.tasks"]
app.conf.beat_schedule_filename = str(settings.data_dir / "celerybeat-schedule")


@worker_init.connect
def _check_model(sender: Any = None, **_: Any) -> None:
    """A model worker reads the endpoint's models once and refuses a retired model."""
    if sender is not None and Queue.MODEL.value in sender.app.amqp.queues.consume_from:
        from service.checks.startup import check_model_at_start
        from service.core.profiles import get_profile

        check_model_at_start(settings, get_profile(settings.model,
                                                   settings.model_profiles_file or None), "worker")


@worker_shutting_down.connect
def _drain(**_: Any) -> None:
    """SIGTERM: Celery stops taking tasks and lets those in flight finish; after the grace
    period whatever is still in flight is handed back (its leases expired at once, so the sweep
    sends it to another worker now, not a lease later) and the process ends."""

    def give_up() -> None:
        time.sleep(settings.shutdown_grace_s)
        try:
            with Database(settings.resolved_database_url).unit_of_work() as uow:
                handed = hand_back(uow.session)
            log.warning("worker.drain.handed_back", leases=handed)
        finally:
            os._exit(0)

    threading.Thread(target=give_up, name="longdoc-drain", daemon=True).start()


@worker_shutdown.connect
def _hand_back(**_: Any) -> None:
    with Database(settings.resolved_database_url).unit_of_work() as uow:
        hand_back(uow.session)


@worker_process_init.connect
def _warm_up(**_: Any) -> None:
    # Parsing children are forked from this process and inherit the loaded tokenizer.
    from service.core.tokens import get_encoding

    get_encoding()
