"""The FastAPI application."""

from __future__ import annotations

from fastapi import FastAPI

from service.api import documents, health, jobs
from service.db import get_engine, get_sessionmaker
from service.errors import install_error_handlers
from service.logs import configure_logging
from service.profiles import get_profile
from service.queue import TaskQueue
from service.settings import Settings, get_settings
from service.storage import get_storage


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level)
    app = FastAPI(title="longdoc", version="0.1.0",
                  description="Long documents to validated JSON with long-context LLMs.")
    app.state.settings = settings
    app.state.engine = get_engine()
    app.state.sessionmaker = get_sessionmaker()
    app.state.storage = get_storage()
    app.state.queue = TaskQueue(settings)
    app.state.profile = get_profile(settings.model, settings.model_profiles_file or None)
    install_error_handlers(app)
    for module in (health, documents, jobs):
        app.include_router(module.router)
    return app
