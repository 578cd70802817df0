from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Stack


def start_stack(tmp: Path, database: str = "sqlite", **kwargs) -> Stack:  # type: ignore[no-untyped-def]
    stack = Stack(tmp, database=database, **kwargs)
    try:
        return stack.start()
    except BaseException:
        print(stack.logs())
        stack.stop()
        raise


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The service on SQLite, shared by the tests that do not change its configuration."""
    s = start_stack(tmp_path_factory.mktemp("stack"))
    yield s
    s.stop()


@pytest.fixture(scope="session")
def tenant(stack: Stack) -> dict[str, str]:
    return stack.create_key("acme")
