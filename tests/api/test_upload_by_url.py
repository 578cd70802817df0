"""``POST /v1/documents`` with ``{"url": ...}``: fetched with the guard webhooks use."""

from __future__ import annotations

import httpx
import pytest

from tests.api.conftest import _png
from tests.support.fileserver import FileServer
from tests.support.stack import CORPUS, Stack, no_temporary_files, wait_document

PDF = (CORPUS / "004-pdflatex-4-pages" / "pdflatex-4-pages.pdf").read_bytes()


def by_url(client: httpx.Client, url: str) -> httpx.Response:
    return client.post("/v1/documents", json={"url": url})


def test_a_pdf_served_from_an_allowed_address_becomes_a_document(hostile: Stack, keys) -> None:
    server = FileServer("127.0.0.2", routes={"/files/contract.pdf": PDF})
    try:
        with hostile.client(keys["a"]) as client:
            created = by_url(client, f"{server.url}/files/contract.pdf")
            assert created.status_code == 201, created.text
            doc = created.json()
            assert doc["source_url"] == f"{server.url}/files/contract.pdf"
            assert doc["media_type"] == "application/pdf" and doc["bytes"] == len(PDF)
            assert doc["filename"] == "contract.pdf"
            assert wait_document(client, doc["id"])["pages"] == 4
    finally:
        server.close()


@pytest.mark.parametrize("target", ["127.0.0.1", "[::ffff:127.0.0.1]"])
def test_a_refused_address_is_422_and_never_contacted(hostile: Stack, keys, target: str) -> None:
    server = FileServer("127.0.0.1", routes={"/x.pdf": PDF})
    try:
        port = server.url.rsplit(":", 1)[1]
        with hostile.client(keys["a"]) as client:
            response = by_url(client, f"http://{target}:{port}/x.pdf")
            assert response.status_code == 422 and response.json()["error"]["code"] == "url_not_allowed"
        assert server.connections == 0
    finally:
        server.close()


def test_a_redirect_to_a_refused_address_is_not_followed(hostile: Stack, keys) -> None:
    refused = FileServer("127.0.0.1", routes={"/x.pdf": PDF})
    allowed = FileServer("127.0.0.2", redirects={"/go": f"{refused.url}/x.pdf"})
    try:
        with hostile.client(keys["a"]) as client:
            response = by_url(client, f"{allowed.url}/go")
            assert response.status_code == 422 and response.json()["error"]["code"] == "url_not_allowed"
        assert allowed.requests == ["/go"] and refused.connections == 0
    finally:
        refused.close()
        allowed.close()


def test_fetching_has_the_upload_limits(hostile: Stack, keys) -> None:
    server = FileServer("127.0.0.2", routes={"/big.pdf": b"%PDF-1.4\n" + b"0" * (2 * 1024 * 1024),
                                            "/notes.txt": b"plain text",
                                            "/img.png": _png()})
    try:
        with hostile.client(keys["a"]) as client:
            big = by_url(client, f"{server.url}/big.pdf")
            assert big.status_code == 413 and big.json()["error"]["code"] == "file_too_large"
            text = by_url(client, f"{server.url}/notes.txt")
            assert text.status_code == 415
            missing = by_url(client, f"{server.url}/missing.pdf")
            assert missing.status_code == 422 and missing.json()["error"]["code"] == "url_fetch_failed"
            for url in ("ftp://127.0.0.2/x", "http://user:pw@127.0.0.2/x", "not a url"):
                response = by_url(client, url)
                assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_url"
            assert by_url(client, f"{server.url}/img.png").status_code == 201
        no_temporary_files(hostile.data_dir)
    finally:
        server.close()
