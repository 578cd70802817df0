"""The Celery app of the workers and beat: the shared configuration, and the tasks module."""

from __future__ import annotations

import os
import tempfile

from service.core.settings import get_settings

# prometheus_client decides where a process keeps its values when it is first imported, so the
# worker's private multiprocess directory is made before anything imports it (the tasks do).
# Prefork children inherit it and the main process serves their sum (service/metrics.py).
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(
    prefix=f"longdoc-metrics-{os.getpid()}-", dir=get_settings().metrics_dir or None)

import atexit
import shutil
import threading
import time
from typing import Any

from celery.signals import (
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
    worker_shutting_down,
)

from schemas.tasks import Queue
from service.core.logs import configure_logging, log
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
METRICS_DIR = os.environ["PROMETHEUS_MULTIPROC_DIR"]


def _remove_metrics_dir(owner: int = os.getpid()) -> None:
    if os.getpid() == owner:  # not in a forked child that happens to exit through atexit
        shutil.rmtree(METRICS_DIR, ignore_errors=True)


# A worker killed -9 leaves its directory behind: the next worker to start removes it.
atexit.register(_remove_metrics_dir)


@worker_init.connect
def _serve_metrics(sender: Any = None, **_: Any) -> None:
    """The main process serves the sum of the worker's processes; every series it will report
    exists from the start, at zero."""
    from service import metrics

    metrics.remove_stale_dirs(settings.metrics_dir or None)
    queues = set(sender.app.amqp.queues.consume_from) if sender is not None else set()
    metrics.start_series(queues, settings.model)
    metrics.serve_worker_metrics(settings.host, settings.metrics_port)


@worker_process_shutdown.connect
def _forget_child(pid: int | None = None, **_: Any) -> None:
    """A prefork child that exits leaves the live gauges (its counters stay in the sum)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid or os.getpid())


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
            _remove_metrics_dir()  # os._exit skips atexit
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
