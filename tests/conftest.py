from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.stack import Stack, start_stack

_getaddrinfo = socket.getaddrinfo


def _local_only(host: Any, *args: Any, **kwargs: Any) -> Any:
    """Tests never look a name up (a lookup leaves the machine): IP literals and ``localhost``
    pass, any other name fails the test that asked for it."""
    name = host.decode() if isinstance(host, bytes) else host
    if name is not None and name != "localhost":
        try:
            ipaddress.ip_address(name.split("%", 1)[0])
        except ValueError:
            raise AssertionError(f"a test resolved the name {name!r}: use an IP literal") from None
    return _getaddrinfo(host, *args, **kwargs)


def pytest_configure(config: pytest.Config) -> None:
    socket.getaddrinfo = _local_only


def pytest_unconfigure(config: pytest.Config) -> None:
    socket.getaddrinfo = _getaddrinfo


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The service on SQLite, shared by the tests that do not change its configuration."""
    s = start_stack(tmp_path_factory.mktemp("stack"))
    yield s
    s.stop()


@pytest.fixture(scope="session")
def tenant(stack: Stack) -> dict[str, str]:
    return stack.create_key("acme")
