"""The whole path through real processes: upload, queue, model, validated JSON, poll, webhook.

Runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import io
import json
import socket
import sqlite3
import time
from collections.abc import Iterator

import jsonschema
import pytest
from PIL import Image

from tests.support.stack import (
    CORPUS,
    Stack,
    WebhookReceiver,
    no_temporary_files,
    read_http_reply,
    start_stack,
    upload,
    wait_document,
    wait_job,
    wait_until,
)

INVOICE_SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "page_count": {"type": "integer", "minimum": 0},
        "summary": {"type": "string", "maxLength": 500},
        "topics": {"type": "array", "items": {"type": "string"}},
        "author": {"type": "object", "properties": {"name": {"type": "string"},
                                                     "email": {"type": "string"}},
                   "required": ["name"]},
    },
    "required": ["title", "topics"],
}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def db_stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if request.param == "sqlite":
        yield request.getfixturevalue("stack")
        return
    s = start_stack(tmp_path_factory.mktemp("pg"), database="postgresql")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def keys(db_stack: Stack) -> dict[str, dict[str, str]]:
    return {"a": db_stack.create_key("tenant-a"), "b": db_stack.create_key("tenant-b")}


def _png_bytes() -> bytes:
    img = Image.new("RGB", (640, 480), "white")
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def test_corpus_pdf_reaches_succeeded_with_a_schema_valid_result(db_stack: Stack, keys) -> None:
    with db_stack.client(keys["a"]["api_key"]) as client:
        pdf = CORPUS / "004-pdflatex-4-pages" / "pdflatex-4-pages.pdf"
        created = upload(client, pdf)
        assert created.status_code == 201, created.text
        doc = created.json()
        assert doc["media_type"] == "application/pdf" and doc["bytes"] == pdf.stat().st_size
        ready = wait_document(client, doc["id"])
        assert ready["status"] == "ready" and ready["pages"] == 4 and ready["tokens"] > 1000
        response = client.post("/v1/jobs", json={"document_ids": [doc["id"]], "schema": INVOICE_SCHEMA})
        assert response.status_code == 202, response.text
        assert response.headers["location"] == f"/v1/jobs/{response.json()['id']}"
        job = wait_job(client, response.json()["id"])
        assert job["status"] == "succeeded", job
        assert job["model"] == "sandbox"
        assert job["usage"]["prompt_tokens"] > ready["tokens"]
        assert job["cost_usd"] > 0
        result = client.get(f"/v1/jobs/{job['id']}/result").json()
        jsonschema.validate(result["data"], INVOICE_SCHEMA)
        # Filled from the document's own text, not a placeholder.
        assert result["data"]["title"].startswith("Hello, here is some text")


def test_png_reaches_succeeded(db_stack: Stack, keys) -> None:
    with db_stack.client(keys["a"]["api_key"]) as client:
        doc = upload(client, "scan.png", data=_png_bytes()).json()
        assert doc["media_type"] == "image/png"
        assert wait_document(client, doc["id"])["pages"] == 1
        job_id = client.post("/v1/jobs", json={"document_ids": [doc["id"]],
                                               "schema": INVOICE_SCHEMA}).json()["id"]
        job = wait_job(client, job_id)
        assert job["status"] == "succeeded", job
        # 640 x 480 is 20 x 15 patches; x 2.46 for nano is 738 tokens of image.
        assert job["usage"]["prompt_tokens"] > 738
        data = client.get(f"/v1/jobs/{job_id}/result").json()["data"]
        jsonschema.validate(data, INVOICE_SCHEMA)


def test_missing_or_wrong_key_is_401(db_stack: Stack) -> None:
    with db_stack.client() as client:
        response = client.get("/v1/jobs/job_x")
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"
    with db_stack.client("ld_not-a-key") as client:
        response = upload(client, "x.png", data=_png_bytes())
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"


def test_another_tenants_document_and_job_are_404(db_stack: Stack, keys) -> None:
    with db_stack.client(keys["a"]["api_key"]) as a, db_stack.client(keys["b"]["api_key"]) as b:
        doc = upload(a, "a.png", data=_png_bytes()).json()
        wait_document(a, doc["id"])
        job = a.post("/v1/jobs", json={"document_ids": [doc["id"]], "schema": INVOICE_SCHEMA}).json()
        assert b.get(f"/v1/documents/{doc['id']}").status_code == 404
        assert b.get(f"/v1/jobs/{job['id']}").status_code == 404
        assert b.get(f"/v1/jobs/{job['id']}/result").status_code == 404
        assert b.post(f"/v1/jobs/{job['id']}/cancel").status_code == 404
        # Using another tenant's document in a job is as if it did not exist.
        response = b.post("/v1/jobs", json={"document_ids": [doc["id"]], "schema": INVOICE_SCHEMA})
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


def test_unknown_file_type_is_415(db_stack: Stack, keys) -> None:
    with db_stack.client(keys["a"]["api_key"]) as client:
        response = upload(client, "notes.txt", data=b"just some text, not a document\n" * 10)
        assert response.status_code == 415
        assert response.json()["error"]["code"] == "unsupported_media_type"
        # A PDF header after byte 0 is not a PDF.
        response = upload(client, "late.pdf", data=b"\n\n%PDF-1.4\n%%EOF")
        assert response.status_code == 415


@pytest.mark.parametrize("schema, reason", [
    ({"type": "array", "items": {"type": "string"}}, "root"),
    ({"type": "object", "properties": {"a": {"type": "strnig"}}}, "properties/a/type"),
    ({"type": "object", "properties": {"a": {"allOf": [{"type": "string"}]}}}, "allOf"),
    ({"type": "object", "properties": {"meta": {"type": "object"}}}, "properties"),
])
def test_invalid_schema_is_422_with_the_reason(db_stack: Stack, keys, schema, reason) -> None:
    with db_stack.client(keys["a"]["api_key"]) as client:
        doc = upload(client, "a.png", data=_png_bytes()).json()
        response = client.post("/v1/jobs", json={"document_ids": [doc["id"]], "schema": schema})
        assert response.status_code == 422
        error = response.json()["error"]
        assert error["code"] == "invalid_schema"
        assert reason in error["message"]


def test_result_is_409_until_the_job_has_succeeded(db_stack: Stack, keys) -> None:
    db_stack.sandbox(ttft_s=1.5)
    try:
        with db_stack.client(keys["a"]["api_key"]) as client:
            doc = upload(client, "a.png", data=_png_bytes()).json()
            job_id = client.post("/v1/jobs", json={"document_ids": [doc["id"]],
                                                   "schema": INVOICE_SCHEMA}).json()["id"]
            early = client.get(f"/v1/jobs/{job_id}/result")
            assert early.status_code == 409
            assert early.json()["error"]["code"] == "job_not_succeeded"
            assert wait_job(client, job_id)["status"] == "succeeded"
            assert client.get(f"/v1/jobs/{job_id}/result").status_code == 200
    finally:
        db_stack.sandbox()


def test_failing_webhook_receiver_gets_the_event_with_the_same_id(db_stack: Stack, keys) -> None:
    receiver = WebhookReceiver(keys["a"]["webhook_secret"], fail_first=2)
    try:
        with db_stack.client(keys["a"]["api_key"]) as client:
            doc = upload(client, "a.png", data=_png_bytes()).json()
            job_id = client.post("/v1/jobs", json={"document_ids": [doc["id"]], "schema": INVOICE_SCHEMA,
                                                   "webhook_url": receiver.url}).json()["id"]
            assert wait_job(client, job_id)["status"] == "succeeded"
            wait_until(lambda: len(receiver.received) >= 3, 30, "three webhook attempts")
            ids = {r.headers["webhook-id"] for r in receiver.received}
            assert len(ids) == 1
            assert all(r.verified is not None for r in receiver.received), "signature must verify"
            event = receiver.received[-1].verified
            assert event is not None and event["type"] == "job.succeeded" and event["data"]["id"] == job_id
            deliveries = wait_until(
                lambda: [d for d in client.get(f"/v1/jobs/{job_id}/webhooks").json()["deliveries"]
                         if d["status"] == "delivered"], 10, "the delivery to be recorded")
            codes = [a["status_code"] for a in deliveries[0]["attempts"]]
            assert codes == [500, 500, 204]
    finally:
        receiver.close()


def test_failed_job_sends_job_failed(db_stack: Stack, keys) -> None:
    receiver = WebhookReceiver(keys["a"]["webhook_secret"])
    try:
        with db_stack.client(keys["a"]["api_key"]) as client:
            doc = upload(client, "a.png", data=_png_bytes()).json()
            job_id = client.post("/v1/jobs", json={
                "document_ids": [doc["id"]], "schema": INVOICE_SCHEMA,
                "instructions": "SANDBOX_REFUSE", "webhook_url": receiver.url}).json()["id"]
            job = wait_job(client, job_id)
            assert job["status"] == "failed"
            assert job["error"]["code"] == "model_refused"
            # Our words, not the model's (its refusal is free text and may quote the document).
            assert job["error"]["message"] == "the model refused to extract from these pages"
            wait_until(lambda: receiver.received, 30, "the job.failed event")
            failed = receiver.received[0].verified
            assert failed is not None and failed["type"] == "job.failed"
    finally:
        receiver.close()


def test_webhook_to_a_private_address_is_refused_without_the_allow_list(stack: Stack, tenant) -> None:
    # The shared stack allows loopback only; 10.0.0.0/8 stays refused.
    with stack.client(tenant["api_key"]) as client:
        doc = upload(client, "a.png", data=_png_bytes()).json()
        response = client.post("/v1/jobs", json={"document_ids": [doc["id"]], "schema": INVOICE_SCHEMA,
                                                 "webhook_url": "http://10.1.2.3/hook"})
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "webhook_url_not_allowed"


def test_upload_over_the_limit_is_refused_while_reading(tmp_path) -> None:
    s = start_stack(tmp_path, env_extra={"LONGDOC_MAX_UPLOAD_BYTES": str(1024 * 1024)})
    try:
        key = s.create_key("small")["api_key"]
        boundary = "XyZ"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.pdf\"\r\n"
                "Content-Type: application/pdf\r\n\r\n%PDF-1.4\n").encode()
        with socket.create_connection(("127.0.0.1", s.api_port), timeout=20) as sock:
            sock.sendall((f"POST /v1/documents HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                          f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                          "Transfer-Encoding: chunked\r\n\r\n").encode())
            payload = head + b"0" * (2 * 1024 * 1024)
            sock.sendall(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
            # The body never ends: an answer can only come from reading, not from the whole body.
            reply = read_http_reply(sock)
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
        assert b"file_too_large" in reply or b"content-length" in reply.lower()
        no_temporary_files(s.data_dir)  # a refused upload leaves nothing behind
        db = sqlite3.connect(s.data_dir / "longdoc.db")
        assert db.execute("SELECT count(*) FROM documents").fetchone()[0] == 0
    finally:
        s.stop()


def test_keys_are_stored_hashed(stack: Stack) -> None:
    created = stack.create_key("hashing")
    assert created["webhook_secret"].startswith("whsec_")
    assert created["tenant"] == "hashing"
    raw = (stack.data_dir / "longdoc.db").read_bytes()
    assert created["api_key"].encode() not in raw
    wal = stack.data_dir / "longdoc.db-wal"
    assert not wal.exists() or created["api_key"].encode() not in wal.read_bytes()
    with stack.client(created["api_key"]) as client:
        assert client.get("/v1/documents/doc_missing").status_code == 404


def test_healthz_and_readyz_follow_redis(tmp_path) -> None:
    import subprocess
    import sys

    from tests.support.stack import free_port, wait_http

    port = free_port()
    redis_proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                   "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    s = Stack(tmp_path, env_extra={"LONGDOC_REDIS_URL": f"redis://127.0.0.1:{port}/0"})
    s.data_dir = tmp_path / "data"
    s.data_dir.mkdir()
    s.env = {**__import__("os").environ, "LONGDOC_DATA_DIR": str(s.data_dir),
             "LONGDOC_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    s.pg = None
    try:
        s.longdoc(["migrate"])
        api_port = free_port()
        s.url = f"http://127.0.0.1:{api_port}"
        proc = s._spawn("api", [sys.executable, "-m", "uvicorn", "service.api.app:create_app",
                                "--factory", "--port", str(api_port)])
        wait_http(f"{s.url}/healthz", 60, [proc])
        with s.client() as client:
            wait_until(lambda: client.get("/readyz").status_code == 200, 20, "readyz 200")
            redis_proc.terminate()
            redis_proc.wait(timeout=10)
            response = wait_until(lambda: (r := client.get("/readyz")).status_code == 503 and r, 20,
                                  "readyz 503 with Redis down")
            assert response.json()["error"]["code"] == "not_ready"
            assert response.json()["checks"]["redis"].startswith("unavailable")
            assert client.get("/healthz").status_code == 200
    finally:
        if redis_proc.poll() is None:
            redis_proc.kill()
        s.stop()


def test_every_error_has_one_shape(stack: Stack, tenant) -> None:
    with stack.client(tenant["api_key"]) as client:
        for response in (client.get("/v1/jobs/nope"), client.post("/v1/jobs", json={"x": 1}),
                         client.post("/v1/jobs", content=b"{", headers={"content-type": "application/json"})):
            body = response.json()
            assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
            assert json.dumps(body).count("{") == 2


def test_cancel_stops_further_model_calls(tmp_path) -> None:
    """A 12-chunk job on a worker with two calls in flight: cancel it once its first call has
    started, and the chunks not yet sent never reach the model."""
    from tests.support.pdfgen import text_pdf

    s = start_stack(tmp_path, model_concurrency=2)
    try:
        s.sandbox(ttft_s=0.5)
        with s.client(s.create_key("cancel")["api_key"]) as client:
            doc = upload(client, "long.pdf", data=text_pdf(24, lines=40)).json()
            wait_document(client, doc["id"])
            job = client.post("/v1/jobs", json={"document_ids": [doc["id"]], "schema": INVOICE_SCHEMA,
                                               "max_tokens_per_call": 4096, "max_output_tokens": 256}).json()
            assert job["progress"]["chunks_total"] == 12, job
            wait_until(lambda: s.sandbox_stats()["requests"] >= 1, 30, "the first call")
            assert client.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "canceled"
            # Every extract task is consumed (queue and unacked empty) and no call is in flight.
            wait_until(lambda: s.broker_idle() and s.sandbox_stats()["in_flight"] == 0, 60,
                       "the model queue to drain")
            assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "canceled"
            calls = s.sandbox_stats()["requests"]
            assert calls <= 4, f"{calls} calls reached the model after cancel"
    finally:
        s.stop()


def test_a_410_from_the_receiver_disables_the_delivery(stack: Stack, tenant) -> None:
    receiver = WebhookReceiver(tenant["webhook_secret"], fail_first=100, status_on_fail=410)
    try:
        with stack.client(tenant["api_key"]) as client:
            doc = upload(client, "a.png", data=_png_bytes()).json()
            job_id = client.post("/v1/jobs", json={"document_ids": [doc["id"]], "schema": INVOICE_SCHEMA,
                                                   "webhook_url": receiver.url}).json()["id"]
            wait_job(client, job_id)
            deliveries = wait_until(
                lambda: [d for d in client.get(f"/v1/jobs/{job_id}/webhooks").json()["deliveries"]
                         if d["status"] == "disabled"], 20, "the delivery to be disabled")
            # Nothing is scheduled any more: the sweep only sends pending deliveries.
            assert deliveries[0]["next_attempt_at"] is None
            assert len(receiver.received) == 1
            assert [a["status_code"] for a in deliveries[0]["attempts"]] == [410]
    finally:
        receiver.close()


def test_chunks_running_in_parallel_fan_in_exactly_once(db_stack: Stack, keys) -> None:
    from tests.support.pdfgen import text_pdf

    with db_stack.client(keys["a"]["api_key"]) as client:
        doc = upload(client, "long.pdf", data=text_pdf(30, lines=40)).json()
        wait_document(client, doc["id"])
        jobs = [client.post("/v1/jobs", json={"document_ids": [doc["id"]], "schema": INVOICE_SCHEMA,
                                              "max_tokens_per_call": 8000, "max_output_tokens": 2000,
                                              "instructions": f"run {i}"}).json()["id"]
                for i in range(4)]
        for job_id in jobs:
            job = wait_job(client, job_id)
            assert job["status"] == "succeeded", job
            assert job["plan"]["calls"] >= 5
            assert job["progress"] == {"chunks_total": job["plan"]["calls"],
                                       "chunks_done": job["plan"]["calls"]}
            calls = client.get(f"/v1/jobs/{job_id}/calls").json()["calls"]
            assert len(calls) == job["plan"]["calls"]
            assert job["usage"]["prompt_tokens"] == sum(c["prompt_tokens"] for c in calls)
            topics = client.get(f"/v1/jobs/{job_id}/result").json()["data"]["topics"]
            pages = [int(t.split(",")[1].split()[1].rstrip(":")) for t in topics]
            assert pages == sorted(pages), "merged in page order"


def test_documents_and_jobs_are_listed_newest_first_per_tenant(db_stack: Stack, keys) -> None:
    fresh = db_stack.create_key(f"lister-{time.time_ns()}")
    with db_stack.client(fresh["api_key"]) as client, db_stack.client(keys["b"]["api_key"]) as other:
        docs = [upload(client, f"{i}.png", data=_png_bytes()).json()["id"] for i in range(3)]
        for doc_id in docs:
            wait_document(client, doc_id)
        jobs = [client.post("/v1/jobs", json={"document_ids": [d], "schema": INVOICE_SCHEMA}).json()["id"]
                for d in docs]
        for job_id in jobs:
            wait_job(client, job_id)
        page = client.get("/v1/documents", params={"limit": 2}).json()
        assert [d["id"] for d in page["data"]] == docs[::-1][:2]
        rest = client.get("/v1/documents", params={"limit": 2, "before": page["next_before"]}).json()
        assert [d["id"] for d in rest["data"]] == docs[:1] and rest["next_before"] is None
        listed = client.get("/v1/jobs", params={"status": "succeeded"}).json()["data"]
        assert [j["id"] for j in listed] == jobs[::-1]
        assert client.get("/v1/jobs", params={"status": "failed"}).json()["data"] == []
        assert not {d["id"] for d in other.get("/v1/documents").json()["data"]} & set(docs)
