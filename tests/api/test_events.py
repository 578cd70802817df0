"""Live progress through real processes: the job event stream (SSE), long-polling a job, and the
stored pages behind citations."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from tests.support.pdfgen import text_pdf
from tests.support.stack import (
    CORPUS,
    Stack,
    start_stack,
    upload,
    wait_document,
    wait_job,
    wait_until,
)

SCHEMA = {"type": "object", "properties": {"title": {"type": "string"},
                                           "topics": {"type": "array", "items": {"type": "string"}}},
          "required": ["title"]}
FOUR_PAGES = CORPUS / "004-pdflatex-4-pages" / "pdflatex-4-pages.pdf"
# 24 pages cut into 12 calls: a job with many progress events.
MANY_CHUNKS = {"max_tokens_per_call": 4096, "max_output_tokens": 256}


@pytest.fixture
def client(stack: Stack, tenant: dict[str, str]) -> Iterator[httpx.Client]:
    with stack.client(tenant["api_key"]) as c:
        yield c
    stack.sandbox()  # back to instant answers for the next test


def read_events(client: httpx.Client, job_id: str, last_event_id: int | None = None,
                stop_after: int | None = None) -> list[dict[str, Any]]:
    """The stream's events until it closes (or until ``stop_after`` of them, then hang up)."""
    headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
    events = []
    with connect_sse(client, "GET", f"/v1/jobs/{job_id}/events", headers=headers,
                     timeout=httpx.Timeout(60, read=30)) as source:
        assert source.response.headers["content-type"].startswith("text/event-stream")
        for sse in source.iter_sse():
            if not sse.data:
                continue  # the opening "retry:" field
            body = json.loads(sse.data)
            assert sse.event == body["type"] and sse.id == str(body["id"])
            events.append(body)
            if stop_after is not None and len(events) >= stop_after:
                break  # leaving the block closes the connection mid-stream
    return events


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def any_db_client(request: pytest.FixtureRequest,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """On PostgreSQL, event ids are taken at insert, not commit: the per-job lock must keep
    them in commit order there too."""
    if request.param == "sqlite":
        stack: Stack = request.getfixturevalue("stack")
        with stack.client(request.getfixturevalue("tenant")["api_key"]) as c:
            yield c
        return
    stack = start_stack(tmp_path_factory.mktemp("events-pg"), database="postgresql")
    try:
        with stack.client(stack.create_key("events")["api_key"]) as c:
            yield c
    finally:
        stack.stop()


def test_stream_delivers_every_state_change_in_order_and_closes_when_the_job_ends(
        any_db_client: httpx.Client) -> None:
    client = any_db_client
    doc = upload(client, FOUR_PAGES).json()
    # Created while the document may still be processing: its ingestion is in the stream too.
    job = client.post("/v1/jobs", json={"document_ids": [doc["id"]], "schema": SCHEMA}).json()
    events = read_events(client, job["id"])
    final = client.get(f"/v1/jobs/{job['id']}").json()

    ids = [e["id"] for e in events]
    assert ids == sorted(set(ids)), "ids strictly increase"
    statuses = [e["data"]["status"] for e in events if e["type"] == "status"]
    assert statuses == ["queued", "running", "succeeded"]
    assert events[-1]["type"] == "status", "the stream ends with the job's end"
    documents = [e["data"] for e in events if e["type"] == "document"]
    assert documents and documents[-1]["status"] == "ready"
    assert documents[-1]["pages"] == documents[-1]["pages_parsed"] == 4
    progress = [e["data"] for e in events if e["type"] == "progress"]
    assert progress[-1]["chunks_done"] == progress[-1]["chunks_total"] == 1
    assert progress[-1]["usage"] == final["usage"] and progress[-1]["cost_usd"] == final["cost_usd"]


def test_stream_resumes_after_a_dropped_connection_with_no_gap_and_no_duplicate(
        stack: Stack, client: httpx.Client) -> None:
    stack.sandbox(ttft_s=1.0)  # the job outlives the first connection
    doc = upload(client, "many.pdf", data=text_pdf(24, lines=40)).json()
    wait_document(client, doc["id"])
    job = client.post("/v1/jobs", json={"document_ids": [doc["id"]], "schema": SCHEMA,
                                        **MANY_CHUNKS}).json()
    assert job["progress"]["chunks_total"] == 12, job

    first = read_events(client, job["id"], stop_after=2)
    assert len(first) == 2 and not any(e["data"].get("status") == "succeeded" for e in first)
    rest = read_events(client, job["id"], last_event_id=first[-1]["id"])
    replay = read_events(client, job["id"])  # the whole stream again, now that the job has ended

    assert [e["id"] for e in first + rest] == [e["id"] for e in replay]
    assert first + rest == replay
    done = [e["data"]["chunks_done"] for e in replay if e["type"] == "progress"]
    assert done == sorted(done) and done[-1] == 12
    assert replay[-1]["data"]["status"] == "succeeded"


def test_long_poll_answers_when_the_job_changes_and_ends_with_its_final_state(
        stack: Stack, client: httpx.Client) -> None:
    stack.sandbox(ttft_s=1.5)
    doc = upload(client, FOUR_PAGES).json()
    wait_document(client, doc["id"])
    job = client.post("/v1/jobs", json={"document_ids": [doc["id"]], "schema": SCHEMA}).json()
    # Each request may wait 60 s but must be answered by the job's next change: a long-poll that
    # ignored changes would run into the 20 s read timeout.
    seen: list[str] = []
    while not seen or seen[-1] not in ("succeeded", "failed", "canceled"):
        response = client.get(f"/v1/jobs/{job['id']}", params={"wait": 60},
                              timeout=httpx.Timeout(20))
        assert response.status_code == 200, response.text
        seen.append(response.json()["status"])
        assert len(seen) < 20, seen
    assert seen[-1] == "succeeded"
    # An ended job is answered at once, whatever the wait.
    again = client.get(f"/v1/jobs/{job['id']}", params={"wait": 60}, timeout=httpx.Timeout(20))
    assert again.json()["status"] == "succeeded"


def test_long_poll_returns_the_unchanged_job_when_the_wait_ends(stack: Stack,
                                                                 client: httpx.Client) -> None:
    stack.sandbox(ttft_s=8)
    doc = upload(client, FOUR_PAGES).json()
    wait_document(client, doc["id"])
    job = client.post("/v1/jobs", json={"document_ids": [doc["id"]], "schema": SCHEMA}).json()
    assert job["status"] == "running"
    wait_until(lambda: stack.sandbox_stats()["in_flight"] == 1, 30, "the model call to start")
    body = client.get(f"/v1/jobs/{job['id']}", params={"wait": 1}).json()
    assert body["status"] == "running" and body["id"] == job["id"]
    client.post(f"/v1/jobs/{job['id']}/cancel")


def test_cancel_is_an_event(stack: Stack, client: httpx.Client) -> None:
    stack.sandbox(ttft_s=8)
    doc = wait_document(client, upload(client, FOUR_PAGES).json()["id"])
    job = client.post("/v1/jobs", json={"document_ids": [doc["id"]], "schema": SCHEMA}).json()
    assert client.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "canceled"
    events = read_events(client, job["id"])
    assert [e["data"]["status"] for e in events if e["type"] == "status"] == [
        "queued", "running", "canceled"]


def test_events_and_long_poll_of_another_tenant_are_not_found(stack: Stack,
                                                               client: httpx.Client) -> None:
    doc = upload(client, FOUR_PAGES).json()
    job = client.post("/v1/jobs", json={"document_ids": [doc["id"]], "schema": SCHEMA}).json()
    wait_job(client, job["id"])
    with stack.client(stack.create_key("events-other")["api_key"]) as other:
        for path in (f"/v1/jobs/{job['id']}/events", f"/v1/jobs/{job['id']}?wait=5",
                     f"/v1/documents/{doc['id']}/pages/1"):
            response = other.get(path)
            assert response.status_code == 404, path
            assert response.json()["error"]["code"] == "not_found"
    bad = client.get(f"/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": "x1"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"


def test_pages_give_the_stored_text_and_end_at_the_last_page(client: httpx.Client) -> None:
    doc = wait_document(client, upload(client, FOUR_PAGES).json()["id"])
    page = client.get(f"/v1/documents/{doc['id']}/pages/2").json()
    assert page["kind"] == "text" and page["page"] == 2 and page["pages"] == 4
    assert len(page["text"]) > 200 and page["tokens"] > 0
    assert client.get(f"/v1/documents/{doc['id']}/pages/5").status_code == 404
    assert client.get(f"/v1/documents/{doc['id']}/pages/0").status_code == 422

    photo = wait_document(client, upload(client, CORPUS / "007-imagemagick-images" / "smile.jpg")
                          .json()["id"])
    image = client.get(f"/v1/documents/{photo['id']}/pages/1").json()
    assert image["kind"] == "image" and image["has_image"] and image["text"] == ""


def test_a_long_document_reports_its_pages_while_it_is_read(client: httpx.Client) -> None:
    # 1,500 short pages take the worker seconds to read; the job is created in milliseconds.
    doc = upload(client, "long.pdf", data=text_pdf(1500, lines=4)).json()
    job = client.post("/v1/jobs", json={"document_ids": [doc["id"]], "schema": SCHEMA,
                                        "max_cost_usd": 0.0}).json()
    events = read_events(client, job["id"])
    reading = [e["data"] for e in events if e["type"] == "document"]
    assert any(d["status"] == "processing" and d["pages"] == 1500 and 0 < d["pages_parsed"] < 1500
               for d in reading), reading
    parsed = [d["pages_parsed"] or 0 for d in reading]
    assert parsed == sorted(parsed)
    assert reading[-1] == {**reading[-1], "status": "ready", "pages": 1500, "pages_parsed": 1500}
