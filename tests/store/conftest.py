"""Stacks on S3 storage and on RabbitMQ, shared by the tests of one module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.s3server import S3Server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(str(tmp_path_factory.mktemp("s3") / "moto.log"))
    yield server
    server.stop()
