"""Leases: a worker claims a unit of work (a document to ingest, a job to plan or finalize, a
chunk to extract) with a conditional update, and a thread of its process renews every lease the
process holds until the work is recorded. A worker that dies stops renewing: within a lease the
recovery sweep finds the row runnable again, whatever the broker's visibility timeout.

The owner is the process (host, pid and a random part), so a forked child claims for itself and
a late answer from a worker whose lease was taken over is recognised and not applied twice.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, or_, update
from sqlalchemy.orm import Session

from service.core.logs import log
from service.store.models import Chunk, Document, Job, Leased, utcnow

_owner: tuple[int, str] | None = None
_renewer: tuple[int, threading.Thread] | None = None
_lock = threading.Lock()


def owner() -> str:
    """This process's lease owner name (a forked child gets its own)."""
    global _owner
    pid = os.getpid()
    if _owner is None or _owner[0] != pid:
        _owner = (pid, f"{socket.gethostname()[:40]}:{pid}:{secrets.token_hex(4)}")
    return _owner[1]


def _rowcount(result: Any) -> int:
    return int(cast(CursorResult[Any], result).rowcount)


def claim(session: Session, model: type[Leased], row_id: str, statuses: Iterable[str],
          lease_s: float, now: datetime | None = None, extra: Iterable[Any] = (),
          **values: Any) -> bool:
    """Takes the row's lease if it is in one of ``statuses`` and nobody holds it (and the
    ``extra`` conditions hold); ``values`` are set in the same statement."""
    now = now or utcnow()
    table: Any = model
    result = session.execute(
        update(table)
        .where(table.id == row_id, table.status.in_(list(statuses)),
               or_(table.lease_until.is_(None), table.lease_until < now), *extra)
        .values(lease_owner=owner(), lease_until=now + timedelta(seconds=lease_s), **values))
    return _rowcount(result) == 1


def holds(row: Leased, now: datetime | None = None) -> bool:
    """Whether this process still holds the row's lease (read in the current transaction)."""
    return (row.lease_owner == owner() and row.lease_until is not None
            and row.lease_until >= (now or utcnow()))


def release(row: Leased, hold_s: float = 0.0) -> None:
    """Gives the lease up; ``hold_s`` keeps the row from being taken again for a while (the
    backoff after a failure: the sweep re-sends it once the hold expires)."""
    row.lease_owner = None
    row.lease_until = utcnow() + timedelta(seconds=hold_s) if hold_s else None


def hand_back(session: Session) -> int:
    """Expires every lease this process holds (a clean shutdown): recovery starts at once."""
    now, handed = utcnow(), 0
    for model in (Document, Job, Chunk):
        table: Any = model
        handed += _rowcount(session.execute(
            update(table).where(table.lease_owner == owner()).values(lease_until=now)))
    return handed


def start_renewing(session_factory: Any, lease_s: float) -> None:
    """Starts (once per process) the thread that renews this process's leases every third of a
    lease, with one statement per table."""
    global _renewer
    pid = os.getpid()
    with _lock:
        if _renewer is not None and _renewer[0] == pid and _renewer[1].is_alive():
            return
        thread = threading.Thread(target=_renew_forever, args=(session_factory, lease_s),
                                  name="longdoc-lease-renewer", daemon=True)
        _renewer = (pid, thread)
        thread.start()


def _renew_forever(session_factory: Any, lease_s: float) -> None:
    me = owner()
    stop = threading.Event()
    while not stop.wait(lease_s / 3):
        try:
            with session_factory() as session:
                until = utcnow() + timedelta(seconds=lease_s)
                for model in (Document, Job, Chunk):
                    table: Any = model
                    session.execute(update(table).where(table.lease_owner == me)
                                    .values(lease_until=until))
                session.commit()
        except Exception as exc:  # noqa: BLE001 - a database outage: leases lapse, work is redone
            log.warning("lease.renew_failed", error=type(exc).__name__)
