"""The Python client against the real stack: the same path as ``longdoc extract``, sync and async,
errors as exceptions, event streams that survive a dropped connection, webhook verification."""

from __future__ import annotations

import ast
import asyncio
import threading
from collections.abc import Iterable, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import cast

import httpx
import jsonschema
import pytest

import longdoc
from longdoc import APIError, AsyncClient, Client, JobFailed, JobStatus
from longdoc.webhooks import InvalidWebhook, verify
from tests.support.pdfgen import text_pdf
from tests.support.stack import CORPUS, ROOT, Stack, WebhookReceiver, wait_until

SCHEMA = {"type": "object", "properties": {"title": {"type": "string"},
                                           "topics": {"type": "array", "items": {"type": "string"}}},
          "required": ["title", "topics"]}
FOUR_PAGES = CORPUS / "004-pdflatex-4-pages" / "pdflatex-4-pages.pdf"


@pytest.fixture
def client(stack: Stack, tenant: dict[str, str]) -> Iterator[Client]:
    with Client(stack.url, tenant["api_key"]) as c:
        yield c
    stack.sandbox()


def test_extract_returns_the_validated_result_and_reports_every_event(client: Client) -> None:
    events: list[longdoc.JobEventOut] = []
    uploaded: list[tuple[str, int, int]] = []
    result = client.extract(FOUR_PAGES, schema=SCHEMA, on_event=events.append,
                            on_upload=lambda *progress: uploaded.append(progress))
    jsonschema.validate(result.data, SCHEMA)
    assert uploaded[-1] == (str(FOUR_PAGES), FOUR_PAGES.stat().st_size, FOUR_PAGES.stat().st_size)
    assert [e.data["status"] for e in events if e.type == "status"] == ["queued", "running",
                                                                        "succeeded"]
    assert events[-1].ends_job and events[-1].job_id == result.job_id
    assert result.usage.prompt_tokens > 1000 and result.cost_usd > 0


def test_async_client_does_the_same(stack: Stack, tenant: dict[str, str]) -> None:
    async def run() -> tuple[longdoc.ResultOut, list[longdoc.JobEventOut], longdoc.JobOut]:
        events: list[longdoc.JobEventOut] = []
        async with AsyncClient(stack.url, tenant["api_key"]) as aclient:
            result = await aclient.extract([FOUR_PAGES], schema=SCHEMA, on_event=events.append)
            # Without a handler it long-polls instead of streaming.
            second = await aclient.extract(str(FOUR_PAGES), schema=SCHEMA)
            assert second.data == result.data  # the sandbox answers deterministically
            job = await aclient.jobs.get(result.job_id)
        return result, events, job

    result, events, job = asyncio.run(run())
    jsonschema.validate(result.data, SCHEMA)
    assert job.status == JobStatus.SUCCEEDED and events[-1].data["status"] == "succeeded"


def test_refusals_are_exceptions_with_the_api_code_and_status(client: Client) -> None:
    with pytest.raises(APIError) as missing:
        client.jobs.get("job_nope")
    assert missing.value.code == "not_found" and missing.value.status == 404
    doc = client.documents.upload(FOUR_PAGES)
    with pytest.raises(APIError) as bad_schema:
        client.jobs.create([doc.id], schema={"type": "array"})
    assert bad_schema.value.code == "invalid_schema" and bad_schema.value.status == 422
    with pytest.raises(JobFailed) as failed:
        client.extract(FOUR_PAGES, schema=SCHEMA, instructions="SANDBOX_REFUSE")
    assert failed.value.code == "model_refused" and failed.value.job.status == JobStatus.FAILED
    with pytest.raises(APIError) as wrong_key, Client(client.base_url, "ld_wrong") as stranger:
        stranger.documents.list()
    assert wrong_key.value.code == "unauthorized" and wrong_key.value.status == 401


def test_plan_wait_cancel_and_documents(stack: Stack, client: Client) -> None:
    plan = client.plan(FOUR_PAGES, schema=SCHEMA)
    assert plan.plan.calls == 1 and plan.estimated_cost_usd > 0
    stack.sandbox(ttft_s=8)
    job = client.extract(FOUR_PAGES, schema=SCHEMA, wait=False)
    assert client.jobs.cancel(job.id).status == JobStatus.CANCELED
    assert client.jobs.wait(job.id, timeout=30).status == JobStatus.CANCELED
    doc_id = job.document_ids[0]
    assert doc_id in [d.id for d in client.documents.list(limit=500).data]
    doc = client.documents.wait(doc_id, timeout=30)
    assert doc.status == "ready" and doc.pages == doc.pages_parsed == 4
    page = client.documents.page(doc_id, 1)
    assert page.kind == "text" and page.text


class DropsTheFirstEventStream(httpx.BaseTransport):
    """A network that breaks the first event stream after ``after`` events: the client must
    reconnect with Last-Event-ID by itself."""

    def __init__(self, after: int) -> None:
        self.inner = httpx.HTTPTransport()
        self.after, self.dropped, self.resumed_with = after, False, None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if not request.url.path.endswith("/events"):
            return response
        if self.dropped:
            self.resumed_with = request.headers.get("last-event-id")
            return response
        self.dropped = True
        return httpx.Response(response.status_code, headers=response.headers,
                              stream=_BreakAfter(response, self.after), request=request)


class _BreakAfter(httpx.SyncByteStream):
    def __init__(self, response: httpx.Response, events: int) -> None:
        self.response, self.events = response, events

    def __iter__(self) -> Iterator[bytes]:
        seen = 0
        for chunk in cast(Iterable[bytes], self.response.stream):
            yield chunk
            seen += chunk.count(b"\nid: ") + chunk.startswith(b"id: ")
            if seen >= self.events:
                self.response.close()
                raise httpx.RemoteProtocolError("connection dropped by the test")

    def close(self) -> None:
        self.response.close()


def test_events_resume_after_a_dropped_connection(stack: Stack, tenant: dict[str, str]) -> None:
    stack.sandbox(ttft_s=1.0)
    network = DropsTheFirstEventStream(after=2)
    with Client(stack.url, tenant["api_key"], transport=network) as c:
        pdf = Path(stack.tmp) / "many-events.pdf"
        pdf.write_bytes(text_pdf(24, lines=40))
        doc = c.documents.wait(c.documents.upload(pdf).id, timeout=60)
        job = c.jobs.create([doc.id], SCHEMA, max_tokens_per_call=4096, max_output_tokens=256)
        streamed = list(c.jobs.events(job.id))
    stack.sandbox()
    with Client(stack.url, tenant["api_key"]) as c:
        replay = list(c.jobs.events(job.id))
    assert network.dropped and network.resumed_with == str(streamed[1].id)
    assert [e.id for e in streamed] == [e.id for e in replay]  # no gap, no duplicate
    assert streamed == replay and replay[-1].data["status"] == "succeeded"


def test_webhook_verify_returns_the_typed_event_and_refuses_a_forgery(stack: Stack) -> None:
    keys = stack.create_key("client-webhooks")
    receiver = WebhookReceiver(keys["webhook_secret"])
    try:
        with Client(stack.url, keys["api_key"]) as c:
            result = c.extract(FOUR_PAGES, schema=SCHEMA, webhook_url=receiver.url)
        delivered = wait_until(lambda: receiver.received, 60, "the webhook")[0]
        event = verify(delivered.body, delivered.headers, keys["webhook_secret"])
        assert event.type == "job.succeeded" and event.job.id == result.job_id
        assert event.job.status == JobStatus.SUCCEEDED
        assert event.job.result_url == f"/v1/jobs/{result.job_id}/result"
        assert event.result is not None and event.result.data == result.data  # it rides along
        with pytest.raises(InvalidWebhook):
            verify(delivered.body.replace(b"succeeded", b"failed"), delivered.headers,
                   keys["webhook_secret"])
        with pytest.raises(InvalidWebhook):
            verify(delivered.body, delivered.headers, "whsec_" + "A" * 32)
    finally:
        receiver.close()


def test_extract_from_a_url_the_server_fetches(client: Client, tmp_path: Path) -> None:
    (tmp_path / "doc.pdf").write_bytes(FOUR_PAGES.read_bytes())
    server = ThreadingHTTPServer(("127.0.0.1", 0),
                                 partial(SimpleHTTPRequestHandler, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/doc.pdf"
        result = client.extract(url, schema=SCHEMA)
        jsonschema.validate(result.data, SCHEMA)
    finally:
        server.shutdown()
        server.server_close()


def test_the_client_package_imports_only_the_contract() -> None:
    """``longdoc`` ships to users' machines: it may use ``schemas``, never the service."""
    for path in (ROOT / "longdoc").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] not in ("service", "workers", "bench", "tests"), \
                    f"{path.name} imports {name}"
