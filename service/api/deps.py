"""What a route may ask for: the unit of work, the settings and services of the app, and the
tenant its API key authenticates."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from schemas.errors import ErrorCode, LongdocError
from service.core.profiles import ModelProfile
from service.core.settings import Settings
from service.store.db import Database, UnitOfWork
from service.store.keys import tenant_for_key
from service.store.models import Tenant
from service.store.queue import TaskQueue
from service.store.storage import BlobStore


@dataclass
class Services:
    """Everything ``create_app`` builds from its settings, once."""

    settings: Settings
    db: Database
    storage: BlobStore
    queue: TaskQueue
    profile: ModelProfile

    def unit_of_work(self) -> AbstractContextManager[UnitOfWork]:
        """A short write transaction; its tasks are sent once it has committed."""
        return self.db.unit_of_work(self.queue)


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_session(services: ServicesDep) -> Iterator[Session]:
    """The request's reads (authentication included): a deferred transaction that never takes
    the write lock, so slow checks never hold up other writers. Writes go through a short
    ``services.unit_of_work()`` of their own."""
    session = services.db.session(readonly=True)
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]


def current_tenant(request: Request, session: SessionDep) -> Tenant:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise LongdocError(ErrorCode.UNAUTHORIZED,
                           "missing API key: send 'Authorization: Bearer <key>'",
                           {"WWW-Authenticate": "Bearer"})
    tenant = tenant_for_key(session, key.strip())
    if tenant is None:
        raise LongdocError(ErrorCode.UNAUTHORIZED, "invalid API key", {"WWW-Authenticate": "Bearer"})
    return tenant


CurrentTenant = Annotated[Tenant, Depends(current_tenant)]
