"""The FastAPI application, built from the settings it is given."""

from __future__ import annotations

import os

from fastapi import FastAPI

from service.api.deps import Services
from service.api.errors import install_error_handlers
from service.api.routes import deletion, documents, events, health, jobs, pages, ui, usage
from service.core.logs import configure_logging
from service.core.profiles import get_profile
from service.core.settings import Settings, get_settings
from service.store.db import Database
from service.store.queue import TaskQueue, make_celery
from service.store.storage import open_storage


def create_app(settings: Settings | None = None) -> FastAPI:
    os.umask(0o077)  # stored files are the service user's alone
    settings = settings or get_settings()
    settings.ensure_data_dir()
    configure_logging(settings.log_level)
    app = FastAPI(title="longdoc", version="0.1.0",
                  description="Long documents to validated JSON with long-context LLMs.")
    app.state.services = Services(
        settings=settings,
        db=Database(settings.resolved_database_url),
        storage=open_storage(settings),
        queue=TaskQueue(make_celery(settings)),
        profile=get_profile(settings.model, settings.model_profiles_file or None),
    )
    install_error_handlers(app)
    for module in (health, documents, pages, jobs, events, deletion, usage):
        app.include_router(module.router)
    ui.install(app)
    return app
