"""Reads a stack's database and storage directly, the way an auditor would: every row of every
table (SQLite file or PostgreSQL database) and every stored file."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import psycopg

from tests.support.stack import Stack, wait_until


def _sqlite(stack: Stack) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{stack.data_dir / 'longdoc.db'}?mode=ro", uri=True, timeout=30)


def query(stack: Stack, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of a read query (``?`` placeholders on both databases)."""
    if stack.pg is not None:
        with psycopg.connect(stack.pg.url) as conn:
            return list(conn.execute(sql.replace("?", "%s"), params).fetchall())
    db = _sqlite(stack)
    try:
        return db.execute(sql, params).fetchall()
    finally:
        db.close()


def execute(stack: Stack, sql: str, params: tuple[Any, ...] = ()) -> None:
    """A write done by hand (ageing a ledger row): what an operator could do with SQL."""
    if stack.pg is not None:
        with psycopg.connect(stack.pg.url) as conn:
            conn.execute(sql.replace("?", "%s"), params)
        return
    db = sqlite3.connect(stack.data_dir / "longdoc.db", timeout=60)
    try:
        db.execute(sql, params)
        db.commit()
    finally:
        db.close()


def tables(stack: Stack) -> list[str]:
    if stack.pg is not None:
        rows = query(stack, "SELECT table_name FROM information_schema.tables "
                            "WHERE table_schema = 'public'")
    else:
        rows = query(stack, "SELECT name FROM sqlite_master WHERE type = 'table'")
    return sorted(name for (name,) in rows if name != "alembic_version")


def places(stack: Stack, needle: str) -> dict[str, int]:
    """Where ``needle`` occurs in the database: table -> rows whose text contains it (every
    column of every row, JSON included)."""
    found: dict[str, int] = {}
    for table in tables(stack):
        for row in query(stack, f'SELECT * FROM "{table}"'):
            if any(needle in str(value) for value in row if value is not None):
                found[table] = found.get(table, 0) + 1
    return found


def stored(stack: Stack, key: str) -> bool:
    """Whether the content-addressed store holds the file ``key`` (a SHA-256)."""
    return (stack.data_dir / "files" / key[:2] / key[2:4] / key).exists()


def sqlite_file_holds(stack: Stack, needle: bytes) -> bool:
    """Whether the SQLite files hold these bytes anywhere, free pages and the write-ahead log
    included, once the log has been written back (a checkpoint that truncates it)."""

    def checkpointed() -> bool:
        db = sqlite3.connect(stack.data_dir / "longdoc.db", timeout=60)
        try:
            busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            return busy == 0
        finally:
            db.close()

    wait_until(checkpointed, 60, "a checkpoint that empties the write-ahead log")
    return any(needle in path.read_bytes() for path in Path(stack.data_dir).glob("longdoc.db*"))
