"""Text PostgreSQL refuses and SQLite takes: NUL characters and values longer than a column.
The same request gets 202/404 on SQLite and a 500 on PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from sqlalchemy import String

from service.core.outbound import TargetRefused, parse_url
from service.store.models import Document, Job, WebhookDelivery
from tests.adversarial.conftest import error_of, png
from tests.support.stack import Stack, start_stack, upload, wait_document

SCHEMA = {"type": "object", "required": ["title"], "properties": {"title": {"type": "string"}}}


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("pg"), database="postgresql")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def pg_key(pg: Stack) -> str:
    return pg.create_key("nul")["api_key"]


@pytest.fixture(scope="module")
def pg_doc(pg: Stack, pg_key: str) -> str:
    with pg.client(pg_key) as client:
        doc = upload(client, "a.png", data=png(9)).json()
        wait_document(client, doc["id"])
        return str(doc["id"])


def test_a_nul_in_instructions_is_4xx_or_accepted_on_postgresql(pg: Stack, pg_key: str,
                                                                pg_doc: str) -> None:
    """FINDING (medium): ``"instructions": "a\\u0000b"`` is valid JSON and a valid str; the Text
    column on PostgreSQL refuses NUL ("PostgreSQL text fields cannot contain NUL (0x00)
    bytes"): 500 internal_error (202 on SQLite). Expected: 422 invalid_request (or the NUL
    removed)."""
    body = json.dumps({"document_ids": [pg_doc], "schema": SCHEMA, "instructions": "a\u0000b"})
    with pg.client(pg_key) as client:
        response = client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
        assert response.status_code in (202, 422), (response.status_code, response.text[:200])


def test_a_nul_in_a_filename_is_4xx_or_accepted_on_postgresql(pg: Stack, pg_key: str) -> None:
    """FINDING (medium): a multipart filename with a NUL (raw, or ``filename*=UTF-8''a%00b``)
    is stored as is: 500 on PostgreSQL (201 on SQLite). Expected: 201 with the NUL dropped, or
    400/422."""
    with pg.client(pg_key) as client:
        body = (b'--B\r\nContent-Disposition: form-data; name="file"; filename="a\x00b.png"\r\n\r\n'
                + png(10) + b"\r\n--B--\r\n")
        response = client.post("/v1/documents", content=body,
                               headers={"content-type": "multipart/form-data; boundary=B"})
        assert response.status_code in (201, 400, 422), (response.status_code, response.text[:200])


@pytest.mark.parametrize("path", ["/v1/documents/doc_%00/pages/1", "/v1/jobs/job_%00/events"])
def test_a_nul_in_an_id_is_404_on_postgresql(pg: Stack, pg_key: str, path: str) -> None:
    """FINDING (low): ``GET /v1/documents/{id}/pages/{n}`` and ``GET /v1/jobs/{id}/events`` look
    the id up without the shape check the other routes make (``is_id``): on PostgreSQL a NUL
    in it is a 500."""
    with pg.client(pg_key) as client:
        response = client.get(path)
        assert response.status_code == 404, (response.status_code, response.text[:200])
        error_of(response)


def test_a_normalised_url_fits_the_column_it_is_stored_in() -> None:
    """FINDING (low, PostgreSQL): ``parse_url`` checks the length of the URL as sent (2,000)
    but stores the normalised one, whose IDNA host can be longer: a 2,000-character URL with
    four 12-character CJK labels becomes 2,096 characters, more than ``String(2000)`` of
    ``jobs.webhook_url`` / ``documents.source_url`` — a 500 on PostgreSQL once the name
    resolves. (Shown without a stack: tests never resolve names other than localhost.)"""
    label = "一二三四五六七八九十百千"
    host = ".".join([label] * 4)
    prefix = f"http://{host}/"
    url = prefix + "p" * (2000 - len(prefix))
    columns = (Job.__table__.c.webhook_url, Document.__table__.c.source_url,
               WebhookDelivery.__table__.c.url)
    limit = min(c.type.length for c in columns if isinstance(c.type, String) and c.type.length)
    try:
        normalised = parse_url(url).url
    except TargetRefused as refused:  # the normalised form is measured and refused: a 4xx
        assert "longer than 2000 characters" in str(refused)
    else:
        assert len(normalised) <= limit, f"{len(url)} characters sent, {len(normalised)} stored"
    assert len(parse_url(prefix + "p" * 100).url) <= limit, "a URL within the cap is accepted"


def test_every_job_finishes_when_the_database_drops_every_connection(pg: Stack, pg_key: str) -> None:
    """Held: ``pg_terminate_backend`` on every connection of this stack's database (only
    ours: the server is shared), twice while jobs are running; stages that lose their
    connection raise, are held back and sent again; every job ends once, books balanced."""
    import psycopg

    from tests.support.stack import PG_ADMIN, wait_job, wait_until

    pg.sandbox(ttft_s=1.0)
    try:
        with pg.client(pg_key) as client:
            docs = [upload(client, f"t{i}.png", data=png(70 + i)).json()["id"] for i in range(6)]
            jobs = [client.post("/v1/jobs", json={"document_ids": [d], "schema": SCHEMA}).json()["id"]
                    for d in docs]
            assert pg.pg is not None
            for _ in range(2):
                wait_until(lambda: pg.sandbox_stats()["in_flight"] >= 1, 60, "calls in flight")
                with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                    admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                  "WHERE datname = %s AND pid <> pg_backend_pid()", (pg.pg.name,))
            ended = [wait_job(client, j, 120) for j in jobs]
            assert [j["status"] for j in ended] == ["succeeded"] * len(jobs), [
                (j["status"], j.get("error")) for j in ended]
            for job in ended:
                calls = client.get(f"/v1/jobs/{job['id']}/calls").json()["calls"]
                answered = [c for c in calls if c["status"] == "answered"]
                assert job["usage"]["prompt_tokens"] == sum(c["prompt_tokens"] for c in answered)
                assert all(c["status"] != "sent" for c in calls), [c["status"] for c in calls]
    finally:
        pg.sandbox()
