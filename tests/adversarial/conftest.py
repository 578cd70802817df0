"""The review's shared stack (SQLite, as ``make run`` has it) and small helpers to look at its
database and broker the way an operator would."""

from __future__ import annotations

import io
import sqlite3
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from schemas.tasks import Task
from service.core.settings import Settings
from service.store.queue import make_celery
from tests.support.stack import Stack, start_stack

# A small cap, so a test can put a result exactly at it with one short line of text.
RESULT_CAP = 400
UPLOAD_CAP = 1024 * 1024


def png(seed: int = 0, size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (seed * 37 % 255, 120, 60)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="package")
def review(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("review"),
                    env_extra={"LONGDOC_WEBHOOK_MAX_RESULT_BYTES": str(RESULT_CAP),
                               "LONGDOC_MAX_UPLOAD_BYTES": str(UPLOAD_CAP),
                               "LONGDOC_URL_FETCH_TIMEOUT_S": "5"})
    yield s
    s.stop()


@pytest.fixture(scope="package")
def keys(review: Stack) -> dict[str, dict[str, str]]:
    return {"a": review.create_key("mallory"), "b": review.create_key("victim")}


def db_rows(stack: Stack, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of the stack's SQLite database, read as an operator would (read-only)."""
    conn = sqlite3.connect(f"file:{stack.data_dir / 'longdoc.db'}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def send_by_hand(stack: Stack, task: Task, arg: str, times: int = 1) -> None:
    """Sends a task through Celery to the stack's broker, as a duplicated message would arrive."""
    settings = Settings(redis_url=stack.redis_url, queue_prefix=stack.queue_prefix,
                        data_dir=stack.data_dir)
    app = make_celery(settings)
    try:
        for _ in range(times):
            app.send_task(task.value, args=[arg], queue=task.queue.value)
    finally:
        app.close()


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The error body; fails unless it is our one shape."""
    assert response.headers.get("content-type", "").startswith("application/json"), (
        response.status_code, response.text[:300])
    body = response.json()
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), body
    return dict(body["error"])
