"""Engine, sessions and the unit of work. SQLite (WAL) by default, PostgreSQL supported."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import weakref
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from schemas.tasks import Send, Task

READONLY = "longdoc_readonly"
SQLITE_BUSY_S = 60  # how long a writer waits for SQLite's lock before "database is locked"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_S,
                                                  "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_S * 1000)}")
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

    def send_outbox(self) -> None:
        outbox, self.outbox = self.outbox, []
        if outbox and self.sender is not None:
            self.sender.send_all(outbox)

    def rollback(self) -> None:
        self.outbox = []
        self.session.rollback()


class WriterQueue:
    """SQLite's writers, first come first served within a process. SQLite's busy handler
    polls with growing sleeps, so under load a writer that has waited long keeps losing to
    newcomers (seen: a claim that waited 38 s while 64 model threads committed hundreds of
    times). Reentrant per thread; a writer that waits longer than ``timeout_s`` gets SQLite's
    own error."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._reset()
        _QUEUES.add(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._waiting: deque[tuple[int, threading.Event]] = deque()
        self._owner: int | None = None
        self._depth = 0

    @contextmanager
    def turn(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._lock:
            called = None
            if self._owner == me:
                self._depth += 1
            elif self._owner is None:
                self._owner, self._depth = me, 1
            else:
                called = threading.Event()
                self._waiting.append((me, called))
        if called is not None and not called.wait(self.timeout_s):
            with self._lock:
                if self._owner != me:  # not handed the turn at the last moment either
                    self._waiting.remove((me, called))
                    raise sqlite3.OperationalError("database is locked")
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    # Handed straight to the writer that has waited longest: one wake-up.
                    if self._waiting:
                        self._owner, called = self._waiting.popleft()
                        self._depth = 1
                        called.set()
                    else:
                        self._owner = None


_QUEUES: weakref.WeakSet[WriterQueue] = weakref.WeakSet()


def _reset_queues() -> None:
    """A forked child (a prefork worker's process, a forked parser) starts with nobody's turn."""
    for queue in _QUEUES:
        queue._reset()


os.register_at_fork(after_in_child=_reset_queues)


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)
        self.writers = WriterQueue(SQLITE_BUSY_S) if url.startswith("sqlite") else None

    def session(self, readonly: bool = False) -> Session:
        session = self.sessionmaker()
        if readonly:
            session.connection(execution_options={READONLY: True})
        return session

    @contextmanager
    def unit_of_work(self, sender: TaskSender | None = None) -> Iterator[UnitOfWork]:
        """Commits (then sends) when the block ends, rolls back if it raises."""
        uow = UnitOfWork(self.sessionmaker(), sender)
        with self.writers.turn() if self.writers else contextlib.nullcontext():
            try:
                yield uow
                uow.session.commit()
            except BaseException:
                uow.rollback()
                raise
            finally:
                uow.session.close()
        uow.send_outbox()  # after the turn: a slow broker holds up no other writer

    def dispose(self) -> None:
        self.engine.dispose()
