"""Hostile requests against the real stack (SQLite): what an API key holder can make the service
do. A test named ``..._is_4xx`` or ``..._is_refused`` fails where the review found a 5xx, a
plain-text error, or a job accepted that can only end badly."""

from __future__ import annotations

import json
import sqlite3
import threading
from typing import Any

import httpx
import pytest

from tests.adversarial.conftest import db_rows, error_of, png
from tests.adversarial.test_schema_bounds import ref_chain
from tests.support.stack import (
    Stack,
    WebhookReceiver,
    no_temporary_files,
    upload,
    wait_document,
    wait_job,
    wait_until,
)

SCHEMA = {"type": "object", "required": ["title"], "properties": {"title": {"type": "string"}}}


@pytest.fixture(scope="module")
def ready_doc(review: Stack, keys: dict[str, dict[str, str]]) -> str:
    with review.client(keys["a"]["api_key"]) as client:
        doc = upload(client, "a.png", data=png(1)).json()
        wait_document(client, doc["id"])
        return str(doc["id"])


def post_job(client: httpx.Client, doc_id: str, schema: Any = None, **extra: Any) -> httpx.Response:
    return client.post("/v1/jobs", json={"document_ids": [doc_id], "schema": schema or SCHEMA,
                                         **extra})


# ---------------------------------------------------------------- schemas


def test_a_ref_chain_schema_is_refused_before_it_costs_the_api(review: Stack, keys, ready_doc) -> None:
    """Was: a 105 KB schema whose $defs are a 3,000-link chain of refs kept the API busy ~15 s
    (quadratic) and its answers then hit RecursionError. Now: refused at creation (each ref is
    followed once, and a chain longer than 32 is refused), while another tenant's reads go on."""
    with review.client(keys["a"]["api_key"]) as client:
        created = post_job(client, ready_doc, ref_chain(3000))
        assert created.status_code == 422, created.text
        assert "chain of more than 32" in error_of(created)["message"]
    with review.client(keys["b"]["api_key"]) as client:
        assert client.get("/v1/documents", params={"limit": 5}).status_code == 200


def test_a_schema_the_validator_reads_differently_is_refused_at_creation(review: Stack, keys,
                                                                        ready_doc) -> None:
    """FINDING (high): ``#/$defs/x%25y`` resolves for the creation check (no percent-decoding)
    but not for the answer validator (RFC 6901 §6 decoding). The job is accepted; each model
    answer then makes the task raise, the answered call is booked ``unknown`` (its real usage
    lost), the chunk is retried until ``LONGDOC_TASK_MAX_ATTEMPTS`` and the job fails
    ``internal_error`` — after paying for every attempt."""
    schema = {"type": "object", "required": ["title"],
              "properties": {"title": {"$ref": "#/$defs/x%25y"}},
              "$defs": {"x%25y": {"type": "string"}}}
    with review.client(keys["a"]["api_key"]) as client:
        created = post_job(client, ready_doc, schema)
        if created.status_code == 422:
            return
        job = wait_job(client, created.json()["id"], 120)
        calls = client.get(f"/v1/jobs/{job['id']}/calls").json()["calls"]
    pytest.fail(f"accepted ({created.status_code}); then {job['status']} {job.get('error')}, "
                f"{len(calls)} model calls made (each answered by the sandbox), booked as "
                f"{[c['status'] for c in calls]}, cost_is_estimate={job['cost_is_estimate']}")


def test_answer_validation_of_one_job_is_bounded(tmp_path) -> None:
    """Was: a 400-byte schema (``oneOf`` of 8 refs to a recursive node, plus null) made the
    sandbox write a 7-level answer whose validation is exponential (branches^depth): minutes of
    CPU in the model worker, its lease renewed all along. Now: validation has a step budget, and
    an answer past it fails the job as one that does not match."""
    from tests.adversarial.test_schema_bounds import one_of_tree
    from tests.support.stack import start_stack

    s = start_stack(tmp_path)
    try:
        with s.client(s.create_key("mallory")["api_key"]) as client:
            doc = upload(client, "a.png", data=png(2)).json()
            wait_document(client, doc["id"])
            job_id = post_job(client, doc["id"], one_of_tree(8)).json()["id"]
            ended = wait_job(client, job_id, 60)
            assert ended["status"] == "failed", ended
            assert ended["error"]["code"] == "model_output_invalid"
            assert "too costly to check" in ended["error"]["message"]
    finally:
        s.stop()


# ---------------------------------------------------------------- URLs the service contacts


def test_an_upload_url_with_a_non_ascii_path_is_4xx(review: Stack, keys) -> None:
    """FINDING (medium): ``parse_url`` lets non-ASCII paths through; httpcore raises
    ``TypeError`` ("url strings may not include unicode characters"), which is not caught:
    500 internal_error. Expected: 422 invalid_url, or the path percent-encoded and fetched."""
    with review.client(keys["a"]["api_key"]) as client:
        for url in ("http://127.0.0.1:9/contrat-signé.pdf", "http://127.0.0.1:9/a.pdf?q=\u2028"):
            response = client.post("/v1/documents", json={"url": url})
            assert response.status_code < 500, (url, response.status_code, response.text[:200])
            error_of(response)


def test_a_webhook_url_with_a_non_ascii_path_is_refused_or_delivered(review: Stack, keys,
                                                                     ready_doc) -> None:
    """FINDING (medium): the same URL as a webhook is accepted (202); the delivery then fails
    once with "cannot be attempted: TypeError" and the receiver never hears of the job.
    Expected: 422 invalid_webhook_url at creation, or the path percent-encoded and delivered."""
    receiver = WebhookReceiver(keys["a"]["webhook_secret"])
    try:
        with review.client(keys["a"]["api_key"]) as client:
            created = post_job(client, ready_doc, webhook_url=receiver.url + "/reçu")
            if created.status_code == 422:
                assert error_of(created)["code"] == "invalid_webhook_url"
                return
            assert created.status_code == 202, created.text
            job_id = created.json()["id"]
            wait_job(client, job_id)

            def settled() -> list[dict[str, Any]] | None:
                found = client.get(f"/v1/jobs/{job_id}/webhooks").json()["deliveries"]
                return found if found and found[0]["status"] != "pending" else None

            delivery = wait_until(settled, 30, "the delivery to settle")[0]
        assert receiver.received, f"accepted, then never delivered: {delivery}"
    finally:
        receiver.close()


@pytest.mark.parametrize("host", [
    "2852039166",            # 169.254.169.254 (decimal)
    "0xa9fea9fe",            # the same, hexadecimal
    "0251.0376.0251.0376",   # the same, octal
    "169.254.43518",         # the same, a.b.c form
    "10.1",                  # 10.0.0.1, a.b form
    "0x0a.0.0.1",
    "[::ffff:a9fe:a9fe]",
    "[fe80::1%25lo]",        # a zone id on a link-local address
])
def test_webhook_hosts_in_numeric_forms_are_judged_by_the_address(review: Stack, keys, ready_doc,
                                                                  host: str) -> None:
    """Held: inet_aton's forms resolve (without DNS) to the address they name and are judged."""
    with review.client(keys["a"]["api_key"]) as client:
        response = post_job(client, ready_doc, webhook_url=f"http://{host}/hook")
        assert response.status_code == 422, response.text
        assert error_of(response)["code"] in ("webhook_url_not_allowed", "invalid_webhook_url")


def test_a_decimal_loopback_webhook_is_delivered_where_allowed(review: Stack, keys,
                                                               ready_doc) -> None:
    """Held: ``http://2130706433:port`` (127.0.0.1, allowed in tests) is delivered, signed."""
    receiver = WebhookReceiver(keys["a"]["webhook_secret"])
    try:
        port = receiver.url.split(":")[2].split("/")[0]
        with review.client(keys["a"]["api_key"]) as client:
            created = post_job(client, ready_doc, webhook_url=f"HTTP://2130706433:{port}/hook")
            assert created.status_code == 202, created.text
            wait_job(client, created.json()["id"])
        wait_until(lambda: receiver.received, 30, "the webhook")
        assert receiver.received[0].verified is not None
    finally:
        receiver.close()


# ---------------------------------------------------------------- multipart


def _multipart(client: httpx.Client, body: bytes | Any, boundary: str = "B") -> httpx.Response:
    return client.post("/v1/documents", content=body,
                       headers={"content-type": f"multipart/form-data; boundary={boundary}"})


def _part(name: str, data: bytes, filename: str | None = "f.png", extra: str = "") -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return (f"--B\r\nContent-Disposition: {disposition}\r\n{extra}\r\n").encode() + data + b"\r\n"


def test_a_zero_length_file_is_422_empty_file(review: Stack, keys) -> None:
    """FINDING (low): a 0-byte file (with or without a password) gets 415
    unsupported_media_type: the magic-byte sniff runs before the size check, so the documented
    422 ``empty_file`` can never be returned."""
    with review.client(keys["a"]["api_key"]) as client:
        for fields in ({}, {"password": "secret"}):
            response = client.post("/v1/documents", files={"file": ("empty.pdf", b"")}, data=fields)
            assert (response.status_code, error_of(response)["code"]) == (422, "empty_file")


def test_a_body_without_its_final_boundary_is_400_invalid_multipart(review: Stack, keys) -> None:
    """FINDING (low): a truncated multipart body (the file part never closed) is answered 422
    invalid_request "the multipart body has no 'file' field" — wrong code and a misleading
    message; the issue asks for 400 ``invalid_multipart`` on parse errors."""
    with review.client(keys["a"]["api_key"]) as client:
        body = b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n" + png(3)
        response = _multipart(client, body)
        assert (response.status_code, error_of(response)["code"]) == (400, "invalid_multipart")


@pytest.mark.parametrize("case", ["nested multipart", "base64 transfer encoding", "duplicate file",
                                  "tiny chunks", "NUL in filename", "RFC 2231 filename"])
def test_multipart_edge_cases_get_their_4xx_or_201(review: Stack, keys, case: str) -> None:
    """Held: every shape gets our JSON error (or 201), never a 5xx; nothing is left in tmp."""
    image = png(4)
    inner = (b"--C\r\nContent-Type: image/png\r\n\r\n" + image + b"\r\n--C--\r\n")
    bodies: dict[str, Any] = {
        "nested multipart": _part("file", inner, extra="Content-Type: multipart/mixed; boundary=C\r\n")
        + b"--B--\r\n",
        "base64 transfer encoding": _part("file", __import__("base64").b64encode(image),
                                          extra="Content-Transfer-Encoding: base64\r\n") + b"--B--\r\n",
        "duplicate file": _part("file", image) + _part("file", image) + b"--B--\r\n",
        "tiny chunks": iter([bytes([b]) for b in _part("file", image) + b"--B--\r\n"]),
        "NUL in filename": _part("file", image, filename="a\x00b.png") + b"--B--\r\n",
        "RFC 2231 filename": (b"--B\r\nContent-Disposition: form-data; name=\"file\"; "
                              b"filename*=UTF-8''%e2%80%ae%00gnp.exe\r\n\r\n" + image
                              + b"\r\n--B--\r\n"),
    }
    with review.client(keys["a"]["api_key"]) as client:
        response = _multipart(client, bodies[case])
        assert response.status_code in (201, 400, 413, 415, 422), (response.status_code,
                                                                   response.text[:300])
        if response.status_code != 201:
            error_of(response)
    no_temporary_files(review.data_dir)


# ---------------------------------------------------------------- JSON bodies


@pytest.mark.parametrize("case", ["duplicate keys", "BOM", "UTF-16", "101 documents",
                                  "4,000-digit maximum", "5,000-digit number", "NUL in text",
                                  "lone surrogate"])
def test_odd_json_bodies_get_a_4xx_or_202(review: Stack, keys, ready_doc, case: str) -> None:
    """Held: strict parsing answers each with 202 or our 422, never a 5xx."""
    base = json.dumps({"document_ids": [ready_doc], "schema": SCHEMA})
    bodies = {
        "duplicate keys": base[:-1] + f', "document_ids": ["{ready_doc}"]}}',
        "BOM": "\ufeff" + base,
        "UTF-16": base,
        "101 documents": json.dumps({"document_ids": [ready_doc] * 101, "schema": SCHEMA}),
        "4,000-digit maximum": base.replace('"type": "string"}',
                                            '"type": "string"}, "n": {"type": "integer", "maximum": 1'
                                            + "0" * 4000 + "}", 1),
        "5,000-digit number": base[:-1] + ', "max_tokens_per_call": 1' + "0" * 5000 + "}",
        "NUL in text": base[:-1] + ', "instructions": "a\\u0000b"}',
        "lone surrogate": base[:-1] + ', "instructions": "a\\ud800b"}',
    }
    raw = bodies[case].encode("utf-16" if case == "UTF-16" else "utf-8")
    with review.client(keys["a"]["api_key"]) as client:
        response = client.post("/v1/jobs", content=raw, headers={"content-type": "application/json"})
        assert response.status_code in (202, 422), (response.status_code, response.text[:300])
        if response.status_code == 422:
            error_of(response)


# ---------------------------------------------------------------- idempotency


def test_concurrent_requests_with_one_key_make_one_job(review: Stack, keys, ready_doc) -> None:
    """Held: 8 simultaneous identical requests (SQLite serialises the writers; the unique key
    turns the losers into replays) make one job; the same key from another tenant is its own;
    a different body with the key in flight gets 422 ``idempotency_key_reused``."""
    barrier = threading.Barrier(10)
    results: list[httpx.Response] = []
    lock = threading.Lock()
    with review.client(keys["b"]["api_key"]) as b:
        other_doc = upload(b, "b.png", data=png(5)).json()["id"]
        wait_document(b, other_doc)

    def send(key: str, doc: str, instructions: str | None) -> None:
        with review.client(key) as client:
            barrier.wait(timeout=30)
            response = client.post(
                "/v1/jobs", json={"document_ids": [doc], "schema": SCHEMA,
                                  **({"instructions": instructions} if instructions else {})},
                headers={"Idempotency-Key": "same-key"})
            with lock:
                results.append(response)

    threads = [threading.Thread(target=send, args=(keys["a"]["api_key"], ready_doc, None))
               for _ in range(8)]
    threads.append(threading.Thread(target=send, args=(keys["a"]["api_key"], ready_doc, "other")))
    threads.append(threading.Thread(target=send, args=(keys["b"]["api_key"], other_doc, None)))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(r.status_code in (202, 422) for r in results), [(r.status_code, r.text[:100])
                                                                for r in results]
    mine = [r for r in results if r.request.headers["authorization"].endswith(keys["a"]["api_key"])]
    theirs = [r for r in results if r not in mine]
    accepted = {r.json()["id"] for r in mine if r.status_code == 202}
    reused = [r for r in mine if r.status_code == 422]
    # Whichever body commits first wins; the other body's requests are "reused".
    assert len(accepted) == 1, accepted
    assert {error_of(r)["code"] for r in reused} <= {"idempotency_key_reused"}
    assert len(mine) == 9 and len(reused) in (1, 8), [r.status_code for r in mine]
    assert theirs[0].status_code == 202 and theirs[0].json()["id"] not in accepted
    created = db_rows(review, "SELECT count(*) FROM idempotency_keys WHERE key = 'same-key'")[0][0]
    assert created == 2, "one key per tenant"


def test_a_key_used_on_a_refused_request_or_past_its_day(review: Stack, keys, ready_doc) -> None:
    """Held: a 4xx keeps nothing (the key can then be used), and a key older than
    ``LONGDOC_IDEMPOTENCY_TTL_S`` is forgotten by the sweep and may be used for another body.
    (Note: ``replay`` itself never looks at ``created_at``: an expired key the sweep has not
    deleted yet — beat down, or a backlog above 500 keys per sweep — is still replayed.)"""
    with review.client(keys["a"]["api_key"]) as client:
        bad = client.post("/v1/jobs", json={"document_ids": [ready_doc], "schema": {"type": "array"}},
                          headers={"Idempotency-Key": "after-4xx"})
        assert error_of(bad)["code"] == "invalid_schema"
        good = client.post("/v1/jobs", json={"document_ids": [ready_doc], "schema": SCHEMA},
                           headers={"Idempotency-Key": "after-4xx"})
        assert good.status_code == 202, good.text
    # Age the key by a day and an hour, with the writer lock the service itself would take.
    conn = sqlite3.connect(review.data_dir / "longdoc.db", timeout=60)
    try:
        conn.execute("UPDATE idempotency_keys SET created_at = datetime(created_at, '-25 hours') "
                     "WHERE key = 'after-4xx'")
        conn.commit()
    finally:
        conn.close()
    wait_until(lambda: not db_rows(review, "SELECT 1 FROM idempotency_keys WHERE key = 'after-4xx'"),
               30, "the sweep to forget the expired key")
    with review.client(keys["a"]["api_key"]) as client:
        again = client.post("/v1/jobs", json={"document_ids": [ready_doc], "schema": SCHEMA,
                                              "instructions": "a new request"},
                            headers={"Idempotency-Key": "after-4xx"})
        assert again.status_code == 202 and again.json()["id"] != good.json()["id"]


# ---------------------------------------------------------------- SQLite under concurrent writers


def test_concurrent_uploads_and_jobs_never_5xx_on_sqlite(review: Stack, keys, ready_doc) -> None:
    """Held: 6 clients uploading and creating jobs at once, with the workers and the sweep
    writing too, get 201/202 every time (no ``database is locked``), and every job ends."""
    failures: list[str] = []
    jobs: list[str] = []
    lock = threading.Lock()

    def client_loop(n: int) -> None:
        with review.client(keys["b"]["api_key"]) as client:
            for i in range(3):
                created = upload(client, f"c{n}-{i}.png", data=png(100 + n * 10 + i))
                job = post_job(client, created.json()["id"]) if created.status_code == 201 else None
                with lock:
                    if created.status_code != 201:
                        failures.append(f"upload {created.status_code} {created.text[:100]}")
                    elif job is None or job.status_code != 202:
                        failures.append(f"job {job.status_code if job else '-'}")
                    else:
                        jobs.append(job.json()["id"])

    threads = [threading.Thread(target=client_loop, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not failures, failures
    with review.client(keys["b"]["api_key"]) as client:
        ended = [wait_job(client, j, 120)["status"] for j in jobs]
    assert ended == ["succeeded"] * len(jobs)


# ---------------------------------------------------------------- ids and cursors


@pytest.mark.parametrize("resume", [{"params": {"after": str(2**63)}},
                                    {"headers": {"Last-Event-ID": str(2**64)}}])
def test_an_event_cursor_beyond_64_bits_is_4xx_or_an_empty_stream(review: Stack, keys, ready_doc,
                                                                  resume: dict[str, Any]) -> None:
    """FINDING (low): ``after`` (``ge=0``, no upper bound) and ``Last-Event-ID`` (any digits)
    reach SQLite as an int it cannot bind (``OverflowError``) inside the streaming body: the
    200 is already sent, the stream breaks, and an EventSource client reconnects every second
    with the same id, forever. Expected: 422 invalid_request, or a stream with no events."""
    with review.client(keys["a"]["api_key"]) as client:
        job_id = post_job(client, ready_doc).json()["id"]
        wait_job(client, job_id)
        try:
            with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=30, **resume) as response:
                status = response.status_code
                text = "".join(response.iter_text())
        except httpx.HTTPError as exc:
            pytest.fail(f"the event stream broke: {type(exc).__name__}: {exc}")
        assert status == 422 or (status == 200 and "event:" not in text), (status, text[:200])
