"""Stacks shared by the API tests that send hostile requests."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from PIL import Image

from tests.support.stack import Stack, start_stack, upload, wait_document


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), "white").save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="package", params=["sqlite", "postgresql"])
def hostile(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp(f"hostile-{request.param}"), database=request.param,
                    env_extra={"LONGDOC_MAX_JSON_BYTES": str(256 * 1024),
                               "LONGDOC_MAX_UPLOAD_BYTES": str(1024 * 1024),
                               "LONGDOC_BLOB_GC_INTERVAL_S": "1",
                               "LONGDOC_BLOB_GC_GRACE_S": "600",
                               # Uploads by URL may reach 127.0.0.2 only: 127.0.0.1 stays refused.
                               "LONGDOC_URL_ALLOWED_NETWORKS": "127.0.0.2/32"})
    yield s
    s.stop()


@pytest.fixture(scope="package")
def keys(hostile: Stack) -> dict[str, str]:
    return {"a": hostile.create_key("attacker")["api_key"], "b": hostile.create_key("victim")["api_key"]}


@pytest.fixture(scope="package")
def ready_doc(hostile: Stack, keys: dict[str, str]) -> str:
    with hostile.client(keys["a"]) as client:
        doc = upload(client, "a.png", data=_png()).json()
        wait_document(client, doc["id"])
        return str(doc["id"])
