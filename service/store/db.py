"""Engine, sessions and the unit of work. SQLite (WAL) by default, PostgreSQL supported."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from schemas.tasks import Send, Task

READONLY = "longdoc_readonly"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=60000")
            # A deleted row's bytes are overwritten with zeros, not left in free pages of the
            # file: deleted data is gone from the database file, not just unreachable.
            cur.execute("PRAGMA secure_delete=ON")
            cur.close()

        # Writers take the lock when the transaction starts, so a read-then-write transaction
        # never works from a stale snapshot (the fan-in count depends on it). Read-only
        # sessions (API reads, polling) begin deferred and never queue behind writers.
        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            readonly = conn.get_execution_options().get(READONLY)
            conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_size=10, max_overflow=60, pool_pre_ping=True)


class TaskSender(Protocol):
    def send_all(self, sends: list[Send]) -> None: ...


class UnitOfWork:
    """One transaction, and the tasks it asks for: they are sent only after it commits, so a
    worker never looks for a row that is not there yet."""

    def __init__(self, session: Session, sender: TaskSender | None) -> None:
        self.session, self.sender = session, sender
        self.outbox: list[Send] = []

    def send(self, task: Task, arg: str, countdown: float | None = None) -> None:
        self.outbox.append(Send(task, arg, countdown))

    def commit(self) -> None:
        self.session.commit()
        outbox, self.outbox = self.outbox, []
        if outbox and self.sender is not None:
            self.sender.send_all(outbox)

    def rollback(self) -> None:
        self.outbox = []
        self.session.rollback()


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)

    def session(self, readonly: bool = False) -> Session:
        session = self.sessionmaker()
        if readonly:
            session.connection(execution_options={READONLY: True})
        return session

    @contextmanager
    def unit_of_work(self, sender: TaskSender | None = None) -> Iterator[UnitOfWork]:
        """Commits (then sends) when the block ends, rolls back if it raises."""
        uow = UnitOfWork(self.sessionmaker(), sender)
        try:
            yield uow
            uow.commit()
        except BaseException:
            uow.rollback()
            raise
        finally:
            uow.session.close()

    def dispose(self) -> None:
        self.engine.dispose()
