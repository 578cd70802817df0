"""The Celery app of the workers and beat: the shared configuration, and the tasks module."""

from __future__ import annotations

import os
from typing import Any

from celery.signals import worker_process_init

from service.core.logs import configure_logging
from service.core.settings import get_settings
from service.store.queue import make_celery

os.umask(0o077)  # stored files and page renders are the service user's alone
settings = get_settings()
settings.ensure_data_dir()
configure_logging(settings.log_level)
app = make_celery(settings)
app.conf.include = ["workers.tasks"]
app.conf.beat_schedule_filename = str(settings.data_dir / "celerybeat-schedule")


@worker_process_init.connect
def _warm_up(**_: Any) -> None:
    # Parsing children are forked from this process and inherit the loaded tokenizer.
    from service.core.tokens import get_encoding

    get_encoding()
