"""The service with RabbitMQ as its broker (the machine's, a vhost per stack): quorum queues,
countdowns through delayed delivery, and a killed worker's task back at once."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.support.stack import (
    Stack,
    WebhookReceiver,
    create_job,
    start_stack,
    upload,
    wait_document,
    wait_job,
    wait_until,
)

SCHEMA = {"type": "object", "required": ["title"], "properties": {"title": {"type": "string"}}}


@pytest.fixture(scope="module")
def rabbit_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Redis's visibility timeout stays at its default hour: nothing here may wait for it. The
    # webhook sweep is held off, so a retried delivery can only arrive by its countdown.
    s = start_stack(tmp_path_factory.mktemp("rabbit-stack"), broker="rabbitmq",
                    env_extra={"LONGDOC_VISIBILITY_TIMEOUT_S": "3600",
                               "LONGDOC_WEBHOOK_SWEEP_INTERVAL_S": "3600"})
    yield s
    s.stop()


@pytest.fixture(scope="module")
def tenant(rabbit_stack: Stack) -> dict[str, str]:
    return rabbit_stack.create_key("rabbit")


def png(seed: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (320, 240), (seed % 255, 90, 160)).save(out, "PNG")
    return out.getvalue()


def submit(client: httpx.Client, doc_id: str, **options: Any) -> str:
    return create_job(client, [doc_id], SCHEMA, **options)


def test_a_job_runs_on_rabbitmq_quorum_queues(rabbit_stack: Stack, tenant) -> None:
    with rabbit_stack.client(tenant["api_key"]) as client:
        doc = wait_document(client, upload(client, "a.png", data=png(1)).json()["id"])
        assert wait_job(client, submit(client, doc["id"]))["status"] == "succeeded"
        ready = client.get("/readyz").json()
    assert ready["checks"]["broker"] == "ok"
    assert rabbit_stack.vhost is not None
    queues = rabbit_stack.vhost.queues()
    assert queues["cpu"]["type"] == queues["model"]["type"] == "quorum"


def test_a_retry_countdown_goes_through_delayed_delivery(rabbit_stack: Stack, tenant) -> None:
    """The first delivery fails; its retry (0.5 s by the stack's schedule, a countdown
    rounded up to RabbitMQ's whole second) waits in the broker's delay queues, the only way
    it can come back here (the sweep is held off)."""
    receiver = WebhookReceiver(tenant["webhook_secret"], fail_first=1)
    try:
        with rabbit_stack.client(tenant["api_key"]) as client:
            doc = wait_document(client, upload(client, "b.png", data=png(2)).json()["id"])
            job_id = submit(client, doc["id"], webhook_url=receiver.url)
            assert wait_job(client, job_id)["status"] == "succeeded"
            wait_until(lambda: len(receiver.received) >= 2, 30, "the retried delivery")
            deliveries = client.get(f"/v1/jobs/{job_id}/webhooks").json()["deliveries"]
        assert [a["status_code"] for a in deliveries[0]["attempts"]] == [500, 204]
        assert all(r.verified for r in receiver.received)
    finally:
        receiver.close()


def test_a_killed_model_worker_task_comes_back_at_once(rabbit_stack: Stack, tenant) -> None:
    # Long enough to kill the worker mid-call; short enough that the sandbox, which finishes
    # the dead worker's call anyway, does not hold up the stack's shutdown.
    rabbit_stack.sandbox(ttft_s=8)
    with rabbit_stack.client(tenant["api_key"]) as client:
        doc = wait_document(client, upload(client, "c.png", data=png(3)).json()["id"])
        job_id = submit(client, doc["id"])
        wait_until(lambda: rabbit_stack.sandbox_stats()["in_flight"] >= 1, 30, "the model call")
        rabbit_stack.kill("model")  # kill -9 of the worker while its call is in flight
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "running"
        rabbit_stack.sandbox()  # instant answers again, and its counters start over
        rabbit_stack.start_worker("model", name="model-2")
        # Far inside Redis's visibility timeout (an hour here): RabbitMQ requeued the message
        # the moment the dead worker's connection closed, and the chunk is taken up once the
        # dead worker's lease lapses.
        job = wait_job(client, job_id, 45)
        assert job["status"] == "succeeded", job
        calls = client.get(f"/v1/jobs/{job_id}/calls").json()["calls"]
        # The killed call is on the books as unknown (it may have been billed); the rerun once.
        assert [c["status"] for c in calls] == ["unknown", "answered"]
        assert job["usage"]["prompt_tokens"] == calls[1]["prompt_tokens"]
        assert job["usage"]["completion_tokens"] == calls[1]["completion_tokens"]
        assert client.get(f"/v1/jobs/{job_id}/result").status_code == 200
    assert rabbit_stack.sandbox_stats()["requests"] == 1, "the task ran once more, no more"
