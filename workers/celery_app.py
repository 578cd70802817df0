"""The Celery app of the workers: the shared configuration plus the tasks."""

from __future__ import annotations

from celery.signals import worker_process_init

from service.logs import configure_logging
from service.queue import make_celery
from service.settings import get_settings

settings = get_settings()
configure_logging(settings.log_level)
app = make_celery(settings)
app.conf.beat_schedule_filename = str(settings.data_dir / "celerybeat-schedule")
import workers.tasks  # noqa: E402,F401 - registers the tasks


@worker_process_init.connect
def _warm_up(**_: object) -> None:
    # Parsing children are forked from this process and inherit the loaded tokenizer.
    from service.tokens import get_encoding

    get_encoding()
