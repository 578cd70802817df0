"""The webhook carries the extracted JSON: a receiver needs no API key and no call back."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image
from standardwebhooks import Webhook

from longdoc.webhooks import verify
from tests.support.pdfgen import build_pdf
from tests.support.stack import (
    Stack,
    WebhookReceiver,
    start_stack,
    upload,
    wait_document,
    wait_job,
    wait_until,
)

SCHEMA = {"type": "object", "required": ["title"],
          "properties": {"title": {"type": "string"}, "topics": {"type": "array",
                                                                 "items": {"type": "string"}}}}


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (200, 100), "white").save(out, "PNG")
    return out.getvalue()


def _run(stack: Stack, key: str, receiver: WebhookReceiver, data: bytes, schema: dict) -> str:
    with stack.client(key) as client:
        doc = upload(client, "doc.pdf", data=data).json()
        wait_document(client, doc["id"])
        job_id = client.post("/v1/jobs", json={"document_ids": [doc["id"]], "schema": schema,
                                               "webhook_url": receiver.url}).json()["id"]
        wait_job(client, job_id)
        wait_until(lambda: receiver.received, 30, "the webhook")
        return str(job_id)


def test_job_succeeded_carries_the_result_and_redelivery_sends_the_same_body(stack: Stack,
                                                                           tenant) -> None:
    receiver = WebhookReceiver(tenant["webhook_secret"])
    try:
        pdf = build_pdf([("text", ["Title: Lease agreement", "Topics: rent"])])
        job_id = _run(stack, tenant["api_key"], receiver, pdf, SCHEMA)
        first = receiver.received[0]
        assert first.verified is not None  # standardwebhooks verified the signature
        event = verify(first.body, first.headers, tenant["webhook_secret"])
        assert event.type == "job.succeeded" and event.data.result_included is True
        with stack.client(tenant["api_key"]) as client:
            result = client.get(f"/v1/jobs/{job_id}/result").json()
            assert event.result is not None
            assert event.result.data == result["data"] and event.result.warnings == result["warnings"]
            assert event.job.result_url == f"/v1/jobs/{job_id}/result"
            delivery = client.get(f"/v1/jobs/{job_id}/webhooks").json()["deliveries"][0]
            assert client.post(f"/v1/jobs/{job_id}/webhooks/{delivery['id']}/redeliver").status_code == 202
        wait_until(lambda: len(receiver.received) == 2, 30, "the redelivery")
        again = receiver.received[1]
        assert again.body == first.body and again.headers["webhook-id"] == first.headers["webhook-id"]
        Webhook(tenant["webhook_secret"]).verify(again.body, again.headers)
    finally:
        receiver.close()


def test_job_failed_carries_the_code_and_message_never_document_text(stack: Stack, tenant) -> None:
    receiver = WebhookReceiver(tenant["webhook_secret"])
    marker = "CONFIDENTIALVALUE" * 3
    schema = {"type": "object", "required": ["name"],
              "properties": {"name": {"type": "string", "maxLength": 4}}}
    try:
        _run(stack, tenant["api_key"], receiver, build_pdf([("text", [f"name: {marker}"])]), schema)
        event = verify(receiver.received[0].body, receiver.received[0].headers,
                       tenant["webhook_secret"])
        assert event.type == "job.failed" and event.result is None
        assert event.job.error is not None and event.job.error.code == "model_output_invalid"
        assert "CONFIDENTIAL" not in receiver.received[0].body.decode()
    finally:
        receiver.close()


def test_a_result_above_the_cap_is_announced_not_carried(tmp_path: Path) -> None:
    s = start_stack(tmp_path, env_extra={"LONGDOC_WEBHOOK_MAX_RESULT_BYTES": "64"})
    try:
        keys = s.create_key("cap")
        receiver = WebhookReceiver(keys["webhook_secret"])
        try:
            lines = [f"Topics: {'word ' * 30}{i}" for i in range(5)]
            job_id = _run(s, keys["api_key"], receiver, build_pdf([("text", ["Title: big", *lines])]),
                          SCHEMA)
            body = json.loads(receiver.received[0].body)
            assert body["type"] == "job.succeeded"
            assert body["data"]["result_included"] is False and "result" not in body["data"]
            assert body["data"]["result_url"] == f"/v1/jobs/{job_id}/result"
            event = verify(receiver.received[0].body, receiver.received[0].headers,
                           keys["webhook_secret"])
            assert event.result is None and event.job.result_included is False
        finally:
            receiver.close()
    finally:
        s.stop()
