"""The FastAPI application, built from the settings it is given."""

from __future__ import annotations

import os

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from schemas.errors import ErrorCode
from service.api.deps import Services
from service.api.errors import error_response, install_error_handlers
from service.api.http_metrics import HttpMetrics
from service.api.routes import deletion, documents, events, health, jobs, metrics, pages, ui, usage
from service.checks.startup import check_model_at_start
from service.core.logs import configure_logging, log
from service.core.profiles import get_profile
from service.core.settings import Settings, get_settings
from service.store.db import Database
from service.store.queue import TaskQueue, make_celery
from service.store.storage import StorageUnavailable, open_storage


def create_app(settings: Settings | None = None) -> FastAPI:
    os.umask(0o077)  # stored files are the service user's alone
    settings = settings or get_settings()
    settings.ensure_data_dir()
    configure_logging(settings.log_level)
    profile = get_profile(settings.model, settings.model_profiles_file or None)
    check_model_at_start(settings, profile, "api")  # says what /v1/models disagrees with
    app = FastAPI(title="longdoc", version="0.1.0",
                  description="Long documents to validated JSON with long-context LLMs.")
    app.state.services = Services(
        settings=settings,
        db=Database(settings.resolved_database_url),
        storage=open_storage(settings),
        queue=TaskQueue(make_celery(settings)),
        profile=profile,
    )
    install_error_handlers(app)

    @app.exception_handler(StorageUnavailable)
    async def _storage_down(_: Request, exc: StorageUnavailable) -> JSONResponse:
        # The file store (S3) is down or refuses our credentials: nothing the client did, and
        # worth a retry, like /readyz's 503.
        log.error("api.storage_unavailable", error=str(exc))
        return error_response(503, ErrorCode.NOT_READY, "file storage is unavailable; try again",
                              {"Retry-After": "5"})

    for module in (health, documents, pages, jobs, events, deletion, usage, metrics):
        app.include_router(module.router)
    ui.install(app)
    app.add_middleware(HttpMetrics)
    return app
