"""The webhook's result (issue 16) at its size cap, with non-ASCII text, and ``job.failed``
bodies; duplicated task messages sent by hand through Celery (issue 10)."""

from __future__ import annotations

import json
from typing import Any

from standardwebhooks import Webhook

from schemas.tasks import Task
from tests.adversarial.conftest import RESULT_CAP, db_rows, png, send_by_hand
from tests.support.pdfgen import build_pdf
from tests.support.stack import Stack, WebhookReceiver, upload, wait_document, wait_job, wait_until

FIELDS = ("alpha", "bravo", "charlie", "delta")
SCHEMA = {"type": "object", "required": list(FIELDS),
          "properties": {name: {"type": "string"} for name in FIELDS}}


def result_bytes(data: dict[str, Any], ensure_ascii: bool = True) -> int:
    """The size of ``{"data", "warnings", "sources"}`` (citations off: ``sources`` is null)
    as the event body carries it (``json.dumps``' default, ASCII escapes) or as UTF-8."""
    return len(json.dumps({"data": data, "warnings": [], "sources": None},
                          ensure_ascii=ensure_ascii).encode())


def values_of_size(total: int, char: str = "x") -> dict[str, str]:
    """Field values whose result measures ``total`` bytes as the event carries it."""
    base = result_bytes(dict.fromkeys(FIELDS, ""))
    width = len(json.dumps(char)) - 2
    room = (total - base) // width
    values = {name: char * (room // len(FIELDS)) for name in FIELDS}
    values[FIELDS[0]] += char * (room - sum(len(v) for v in values.values()))
    assert result_bytes(values) == total, "choose a total the char divides"
    return values


def run_with_webhook(stack: Stack, tenant: dict[str, str], lines: list[str], schema: Any,
                     instructions: str | None = None) -> tuple[dict[str, Any], Any, str]:
    """Runs one job with a webhook; returns (the job, the verified event, the raw body)."""
    receiver = WebhookReceiver(tenant["webhook_secret"])
    try:
        with stack.client(tenant["api_key"]) as client:
            doc = upload(client, "d.pdf", data=build_pdf([("text", lines)])).json()
            wait_document(client, doc["id"])
            created = client.post("/v1/jobs", json={
                "document_ids": [doc["id"]], "schema": schema, "webhook_url": receiver.url,
                "citations": False,  # the result is data and warnings only: its size is known
                **({"instructions": instructions} if instructions else {})})
            assert created.status_code == 202, created.text
            job = wait_job(client, created.json()["id"])
            wait_until(lambda: receiver.received, 30, "the webhook")
            got = receiver.received[0]
            event = Webhook(tenant["webhook_secret"]).verify(got.body, got.headers)
            if job["status"] == "succeeded":
                job["result"] = client.get(f"/v1/jobs/{job['id']}/result").json()
            return job, event, got.body.decode()
    finally:
        receiver.close()


def test_a_result_exactly_at_the_cap_is_carried_and_one_byte_more_is_not(review: Stack,
                                                                        keys) -> None:
    """Held: the cap is inclusive; above it the event has ``result_url`` and no data."""
    for total, included in ((RESULT_CAP, True), (RESULT_CAP + 1, False)):
        values = values_of_size(total)
        job, event, _ = run_with_webhook(review, keys["a"], [f"{k}: {v}" for k, v in values.items()],
                                         SCHEMA)
        assert job["result"]["data"] == values, "the sandbox filled the fields from the lines"
        assert event["data"]["result_included"] is included, (total, job["result"])
        if included:
            assert event["data"]["result"]["data"] == job["result"]["data"]
        else:
            assert "result" not in event["data"]
            assert event["data"]["result_url"] == f"/v1/jobs/{job['id']}/result"


def test_a_non_ascii_result_is_measured_as_it_travels(review: Stack, keys) -> None:
    """Was (low): the cap was measured on ``ensure_ascii=False`` UTF-8 while the body is written
    with ASCII escapes: "é" counted 2 bytes and travelled as 6, so a result "within" the cap
    reached the receiver up to 3x larger. Now the cap is measured on the body's own encoding:
    a non-ASCII result that fits as it travels is carried; one escape more and it is not."""
    base = result_bytes(dict.fromkeys(FIELDS, ""))
    total = RESULT_CAP - (RESULT_CAP - base) % 6
    for size, included in ((total, True), (total + 6, False)):
        values = values_of_size(size, "é")
        assert result_bytes(values, ensure_ascii=False) < RESULT_CAP, "fits as UTF-8 either way"
        job, event, raw = run_with_webhook(review, keys["a"],
                                           [f"{k}: {v}" for k, v in values.items()], SCHEMA)
        assert job["result"]["data"] == values
        assert event["data"]["result_included"] is included, size
        if included:
            assert json.dumps(event["data"]["result"]["data"]["alpha"]) in raw, "escaped in the body"
            assert result_bytes(event["data"]["result"]["data"]) <= RESULT_CAP


def test_job_failed_for_a_refusal_carries_our_message_not_the_models(review: Stack, keys) -> None:
    """FINDING (low, by reading): ``model_refused`` stores the model's refusal text verbatim as
    the job's error message, which ``job.failed`` (and logs of the message) carry. A refusal is
    free text written by the model after reading the document, and may quote it; the issue
    says job.failed carries no document text. The sandbox's refusal is a fixed sentence, so
    this test shows the channel, not a leak."""
    job, event, _ = run_with_webhook(review, keys["a"], ["name: CONFIDENTIAL-7731"],
                                     {"type": "object", "required": ["name"],
                                      "properties": {"name": {"type": "string"}}},
                                     instructions="SANDBOX_REFUSE")
    assert event["type"] == "job.failed" and event["data"]["error"]["code"] == "model_refused"
    message = event["data"]["error"]["message"]
    assert "I'm sorry" not in message, f"the model's own words in job.failed: {message!r}"


# ---------------------------------------------------------------- duplicated messages


def test_every_task_sent_twice_after_the_job_ended_changes_nothing(review: Stack, keys) -> None:
    """Held: ingest, plan, extract, finalize and deliver, each sent twice by hand after the job
    succeeded and its webhook was delivered: one result, usage and calls unchanged, one
    delivery with one attempt, the receiver called once."""
    tenant = keys["a"]
    receiver = WebhookReceiver(tenant["webhook_secret"])
    try:
        with review.client(tenant["api_key"]) as client:
            doc = upload(client, "dup.png", data=png(42)).json()
            wait_document(client, doc["id"])
            job_id = client.post("/v1/jobs", json={"document_ids": [doc["id"]], "schema": SCHEMA,
                                                   "webhook_url": receiver.url}).json()["id"]
            before = wait_job(client, job_id)
            wait_until(lambda: receiver.received, 30, "the webhook")
            calls = client.get(f"/v1/jobs/{job_id}/calls").json()["calls"]
            chunks = [r[0] for r in db_rows(review, "SELECT id FROM chunks WHERE job_id = ?", (job_id,))]
            delivery = db_rows(review, "SELECT id FROM webhook_deliveries WHERE job_id = ?",
                               (job_id,))[0][0]
            for task, arg in ((Task.INGEST_DOCUMENT, doc["id"]), (Task.PLAN_JOB, job_id),
                              *((Task.EXTRACT_CHUNK, c) for c in chunks),
                              (Task.FINALIZE_JOB, job_id), (Task.DELIVER_WEBHOOK, delivery)):
                send_by_hand(review, task, arg, times=2)
            wait_until(review.broker_idle, 60, "every duplicate to be consumed")
            after = client.get(f"/v1/jobs/{job_id}").json()
            deliveries = client.get(f"/v1/jobs/{job_id}/webhooks").json()["deliveries"]
            assert after["usage"] == before["usage"] and after["cost_usd"] == before["cost_usd"]
            assert client.get(f"/v1/jobs/{job_id}/calls").json()["calls"] == calls
            assert len(deliveries) == 1 and len(deliveries[0]["attempts"]) == 1
            assert len(receiver.received) == 1
            assert db_rows(review, "SELECT count(*) FROM results WHERE job_id = ?", (job_id,))[0][0] == 1
    finally:
        receiver.close()


def test_an_extract_task_sent_three_more_times_while_running_calls_the_model_once(
        review: Stack, keys) -> None:
    """Held: the claim (a conditional UPDATE) lets one copy call the model."""
    review.sandbox(ttft_s=1.0)
    try:
        with review.client(keys["a"]["api_key"]) as client:
            doc = upload(client, "dup2.png", data=png(43)).json()
            wait_document(client, doc["id"])
            served = review.sandbox_stats()["requests"]
            job_id = client.post("/v1/jobs", json={"document_ids": [doc["id"]],
                                                   "schema": SCHEMA}).json()["id"]
            chunk = db_rows(review, "SELECT id FROM chunks WHERE job_id = ?", (job_id,))[0][0]
            send_by_hand(review, Task.EXTRACT_CHUNK, chunk, times=3)
            job = wait_job(client, job_id)
            wait_until(review.broker_idle, 60, "every duplicate to be consumed")
            assert job["status"] == "succeeded"
            assert [c["status"] for c in client.get(f"/v1/jobs/{job_id}/calls").json()["calls"]] == [
                "answered"]
            assert review.sandbox_stats()["requests"] - served == 1
    finally:
        review.sandbox()


def test_a_failed_job_event_never_quotes_what_was_extracted(review: Stack, keys) -> None:
    """Held: model_output_invalid names the rule and the path, not the value."""
    marker = "SECRETVALUE-QQQQQQQQQQ"
    job, event, raw = run_with_webhook(review, keys["a"], [f"name: {marker}"],
                                       {"type": "object", "required": ["name"],
                                        "properties": {"name": {"type": "string", "pattern": "^[0-9]+$"}}})
    assert event["type"] == "job.failed" and marker not in raw
