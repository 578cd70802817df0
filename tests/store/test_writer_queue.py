"""SQLite's writers in one process take turns in the order they came (``WriterQueue``): under
load, SQLite's own busy handler let newcomers overtake a writer that had waited long."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from sqlalchemy import text

from service.store.db import Database
from tests.support.stack import wait_until


def _database(tmp_path: Path) -> Database:
    db = Database(f"sqlite:///{tmp_path / 'writers.db'}")
    with db.unit_of_work() as uow:
        uow.session.execute(text("CREATE TABLE turns (seq INTEGER PRIMARY KEY, writer INTEGER)"))
    return db


def test_writers_that_waited_are_served_in_the_order_they_came(tmp_path: Path) -> None:
    db = _database(tmp_path)
    assert db.writers is not None
    release = threading.Event()

    def holder() -> None:
        with db.unit_of_work() as uow:
            uow.session.execute(text("INSERT INTO turns (writer) VALUES (-1)"))
            release.wait(60)

    def writer(n: int) -> None:
        with db.unit_of_work() as uow:
            uow.session.execute(text("INSERT INTO turns (writer) VALUES (:n)"), {"n": n})

    queue = db.writers
    first = threading.Thread(target=holder)
    first.start()
    wait_until(lambda: queue._owner is not None, 10, "the first writer to hold the database")
    threads = []
    for n in range(24):
        thread = threading.Thread(target=writer, args=(n,))
        thread.start()
        threads.append(thread)
        wait_until(lambda: len(queue._waiting) == len(threads), 10, f"writer {n} to queue")
    release.set()
    for thread in [first, *threads]:
        thread.join(60)
    with db.session(readonly=True) as session:
        order = list(session.scalars(text("SELECT writer FROM turns ORDER BY seq")))
    assert order == [-1, *range(24)]


def test_a_forked_child_writes_while_its_parent_holds_a_turn(tmp_path: Path) -> None:
    """A prefork worker's process or a forked parser starts with nobody's turn: the turn its
    parent held at the fork is not the child's to wait for."""
    db = _database(tmp_path)
    with db.unit_of_work():  # a turn taken, no statement yet: SQLite itself is not locked
        pid = os.fork()
        if pid == 0:  # the child
            code = 1
            try:
                db.engine.dispose(close=False)  # the parent's connections stay the parent's
                with db.unit_of_work() as uow:
                    uow.session.execute(text("INSERT INTO turns (writer) VALUES (7)"))
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with db.session(readonly=True) as session:
        assert list(session.scalars(text("SELECT writer FROM turns"))) == [7]
