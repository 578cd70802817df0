"""What Prometheus would read from a real stack: the API's and each worker's ``/metrics``
after real jobs, compared with what the jobs themselves report (usage, cost, pages, webhook
deliveries), the database (jobs and documents by status) and the broker (a backlog).

One stack for the module, on a Redis of its own (one test stops it). The rate limiter is on
(at a limit nothing reaches), so every call is timed waiting for it.
"""

from __future__ import annotations

import glob
import io
import json
import os
import re
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.deploy.test_observability import DASHBOARD, documented_metrics, expressions
from tests.metrics.scrape import Scrape, combined, scrape
from tests.support.pdfgen import text_pdf
from tests.support.stack import (
    Stack,
    WebhookReceiver,
    start_stack,
    upload,
    wait_document,
    wait_job,
    wait_until,
)

SCHEMA = {"type": "object", "required": ["title"], "properties": {"title": {"type": "string"}}}
MODEL = "gpt-4.1-nano"


# Which process of the stack serves each queue now (a test restarts workers under new names).
SERVING: dict[str, str] = {}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("metrics"), private_redis=True,
                    env_extra={"LONGDOC_RATE_LIMIT_RPM": "1000000"})
    SERVING.update(cpu="cpu", model="model")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def tenant(stack: Stack) -> dict[str, str]:
    return stack.create_key("metrics")


@pytest.fixture
def client(stack: Stack, tenant: dict[str, str]) -> Iterator[httpx.Client]:
    with stack.client(tenant["api_key"]) as c:
        yield c


def api(stack: Stack) -> Scrape:
    return scrape(f"{stack.url}/metrics")


def worker(stack: Stack, queue: str) -> Scrape:
    name = SERVING[queue]
    return scrape(f"http://127.0.0.1:{stack.metrics_ports[name]}/metrics")


def everything(stack: Stack) -> Scrape:
    return combined([api(stack), worker(stack, "cpu"), worker(stack, "model")])


def png(seed: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (300, 200), (seed * 53 % 255, 40, 200)).save(out, "PNG")
    return out.getvalue()


def submit(client: httpx.Client, doc_id: str, **extra: Any) -> str:
    response = client.post("/v1/jobs", json={"document_ids": [doc_id], "schema": SCHEMA, **extra})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


class Delta:
    """How far each series moved between two scrapes of the same processes."""

    def __init__(self, before: Scrape, after: Scrape) -> None:
        self.before, self.after = before, after

    def __call__(self, name: str, **labels: str) -> float:
        return self.after.value(name, **labels) - self.before.value(name, **labels)


def test_counters_add_up_to_the_jobs_usage_cost_pages_and_deliveries(
        stack: Stack, tenant: dict[str, str], client: httpx.Client) -> None:
    before = everything(stack)
    files = {f"p{i}.pdf": text_pdf(2 + i, lines=12, seed=i) for i in range(3)}
    files.update({f"i{i}.png": png(i) for i in range(2)})
    receiver = WebhookReceiver(tenant["webhook_secret"])
    try:
        docs = [wait_document(client, upload(client, name, data=data).json()["id"])
                for name, data in files.items()]
        jobs = [submit(client, doc["id"], webhook_url=receiver.url) for doc in docs]
        ended = [wait_job(client, job_id) for job_id in jobs]
        assert {j["status"] for j in ended} == {"succeeded"}
        wait_until(lambda: len(receiver.received) >= len(jobs), 60, "one webhook per job")

        def settled() -> Delta | None:
            delta = Delta(before, everything(stack))
            done = (delta("longdoc_webhook_attempts_total", outcome="delivered") >= len(jobs)
                    and delta("longdoc_jobs_finished_total", status="succeeded") >= len(jobs))
            return delta if done else None

        delta: Delta = wait_until(settled, 30, "the workers to count every end and delivery")
    finally:
        receiver.close()
    calls = [c for j in jobs for c in client.get(f"/v1/jobs/{j}/calls").json()["calls"]]
    assert calls and {c["status"] for c in calls} == {"answered"}

    for kind in ("prompt", "cached", "completion"):
        assert delta("longdoc_model_tokens_total", model=MODEL, kind=kind) == sum(
            j["usage"][f"{kind}_tokens"] for j in ended), kind
    # Jobs show cost_usd rounded to 8 decimals.
    assert delta("longdoc_model_cost_dollars_total", model=MODEL) == pytest.approx(
        sum(j["cost_usd"] for j in ended), abs=1e-8 * len(ended))
    assert delta("longdoc_model_cost_dollars_total") > 0
    assert delta("longdoc_model_call_duration_seconds_count", outcome="ok") == len(calls)
    assert delta("longdoc_ratelimit_wait_seconds_count", model=MODEL) == len(calls)
    assert delta("longdoc_model_retries_total") == delta("longdoc_model_rate_limited_total") == 0
    assert worker(stack, "model").value("longdoc_model_calls_in_flight") == 0

    assert delta("longdoc_webhook_attempts_total") == len(jobs), "one attempt per delivery"
    assert delta("longdoc_webhook_attempts_total", outcome="delivered") == len(jobs)
    assert delta("longdoc_jobs_finished_total") == len(jobs)

    pdf_pages = sum(d["pages"] for d in docs if d["media_type"] == "application/pdf")
    assert pdf_pages == 2 + 3 + 4
    assert delta("longdoc_ingest_pages_total", kind="pdf") == pdf_pages
    assert delta("longdoc_ingest_pages_total", kind="image") == 2
    assert delta("longdoc_ingest_duration_seconds_count", kind="pdf") == 3
    assert delta("longdoc_tasks_total", task="longdoc.ingest_document", outcome="succeeded") == 5
    assert delta("longdoc_tasks_total", task="longdoc.extract_chunk", outcome="succeeded") == len(calls)
    assert delta("longdoc_task_duration_seconds_count", task="longdoc.ingest_document") == 5

    assert delta("longdoc_upload_bytes_total") == sum(len(data) for data in files.values())
    assert delta("longdoc_http_requests_total", method="POST", route="/v1/jobs", status="202") == 5
    assert delta("longdoc_http_requests_total", method="POST", route="/v1/documents",
                 status="201") == 5
    assert delta("longdoc_http_request_duration_seconds_count", method="GET",
                 route="/v1/jobs/{job_id}") >= 5


def test_a_path_no_route_has_is_counted_under_one_label(stack: Stack, client: httpx.Client) -> None:
    before = api(stack)
    for i in range(3):
        assert client.get(f"/v1/nothing-{i}").status_code == 404
    after = api(stack)
    assert Delta(before, after)("longdoc_http_requests_total", route="unmatched", status="404") == 3
    assert not any("nothing" in json.dumps(s.labels) for s in after.samples), "never a raw path"


def test_retries_and_429s_are_counted_as_the_model_answered(
        stack: Stack, client: httpx.Client) -> None:
    doc = wait_document(client, upload(client, "r.pdf", data=text_pdf(1, seed=40)).json()["id"])
    before = worker(stack, "model")
    stack.sandbox(error_rate=0.5)  # 500s and 503s, decided per request and attempt
    try:
        jobs = [submit(client, doc["id"], instructions=f"retry {i}") for i in range(4)]
        assert {wait_job(client, j, 120)["status"] for j in jobs} == {"succeeded"}
        errors = stack.sandbox_stats()["errors"]
        answered = stack.sandbox_stats()["completed"]
        calls = [c for j in jobs for c in client.get(f"/v1/jobs/{j}/calls").json()["calls"]]
        stack.sandbox(fail_with="insufficient_quota")  # a 429 retrying cannot help
        quota = wait_job(client, submit(client, doc["id"], instructions="quota"))
    finally:
        stack.sandbox()
    assert quota["status"] == "failed" and quota["error"]["code"] == "model_quota_exhausted"
    delta = Delta(before, worker(stack, "model"))
    assert errors > 0
    assert delta("longdoc_model_call_duration_seconds_count", outcome="server_error") == errors
    assert delta("longdoc_model_call_duration_seconds_count", outcome="ok") == answered
    # Every 5xx is retried except the last of a call that gave up (the chunk waits and tries
    # again later, as a new call on the books).
    gave_up = sum(1 for c in calls if c["status"] == "failed")
    assert delta("longdoc_model_retries_total", reason="server_error") == errors - gave_up
    assert delta("longdoc_model_rate_limited_total", model=MODEL) == 1
    assert delta("longdoc_model_call_duration_seconds_count", outcome="rate_limited") == 1
    assert delta("longdoc_model_retries_total", reason="rate_limited") == 0
    assert delta("longdoc_jobs_finished_total", status="failed") == 1


def test_gauges_count_jobs_and_documents_by_status_from_the_database(
        stack: Stack, client: httpx.Client) -> None:
    before = api(stack)
    broken = upload(client, "broken.pdf", data=b"%PDF-1.7\n" + b"\x00 not a pdf " * 200).json()
    assert wait_document(client, broken["id"])["status"] == "failed"
    # A long document still being read: its job is queued when canceled.
    long_doc = upload(client, "long.pdf", data=text_pdf(300, lines=40, seed=7)).json()
    job_id = submit(client, long_doc["id"])
    canceled = client.post(f"/v1/jobs/{job_id}/cancel")
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    wait_document(client, long_doc["id"], 120)
    after = api(stack)
    jobs = client.get("/v1/jobs", params={"limit": 500}).json()["data"]
    documents = client.get("/v1/documents", params={"limit": 500}).json()["data"]
    for status in ("queued", "running", "succeeded", "failed", "canceled"):
        assert after.value("longdoc_jobs", status=status) == sum(
            1 for j in jobs if j["status"] == status), status
    for status in ("processing", "ready", "failed"):
        assert after.value("longdoc_documents", status=status) == sum(
            1 for d in documents if d["status"] == status), status
    assert after.value("longdoc_jobs", status="canceled") >= 1
    assert after.value("longdoc_documents", status="failed") >= 1
    # The cancel route ended the job in the API process.
    assert Delta(before, after)("longdoc_jobs_finished_total", status="canceled") == 1


def test_the_dashboard_asks_only_for_metrics_a_scrape_has(stack: Stack) -> None:
    seen = everything(stack)
    dashboard = json.loads(Path(DASHBOARD).read_text(encoding="utf-8"))
    asked = {series for expr in expressions(dashboard)
             for series in re.findall(r"\blongdoc_\w+", expr)}
    assert asked and asked <= seen.names(), sorted(asked - seen.names())
    # And every documented metric is exported, with its type and labels.
    for name, metric in documented_metrics().items():
        family = name.removesuffix("_total") if metric.kind == "counter" else name
        assert seen.types.get(family) == metric.kind, name
        series = name if metric.kind != "histogram" else f"{name}_count"
        labels = {k for s in seen.samples if s.name == series for k in s.labels}
        assert labels == set(metric.labels), (name, labels)


def test_queue_depth_counts_a_backlog_until_a_worker_takes_it(
        stack: Stack, client: httpx.Client) -> None:
    stack.kill("cpu")
    docs = [upload(client, f"b{i}.png", data=png(100 + i)).json()["id"] for i in range(3)]
    # Three ingestions wait (with the sweeps beat keeps sending to the same queue).
    waiting = wait_until(lambda: api(stack).value("longdoc_queue_messages", queue="cpu") >= 3,
                         30, "the backlog in the cpu queue")
    assert waiting
    assert api(stack).value("longdoc_queue_messages", queue="model") == 0
    stack.start_worker("cpu", name="cpu-2")
    SERVING["cpu"] = "cpu-2"
    for doc_id in docs:
        assert wait_document(client, doc_id)["status"] == "ready"
    wait_until(lambda: api(stack).value("longdoc_queue_messages", queue="cpu") == 0, 30,
               "the cpu queue to drain")


def _children(pid: int) -> list[int]:
    out = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(Path(stat).parent.name))
    return out


def test_a_killed_prefork_child_keeps_its_counts_in_the_sum(
        stack: Stack, client: httpx.Client) -> None:
    for i in range(2):
        wait_document(client, upload(client, f"k{i}.pdf", data=text_pdf(3, seed=60 + i)).json()["id"])
    before = worker(stack, "cpu")
    pages = before.value("longdoc_ingest_pages_total", kind="pdf")
    assert pages >= 6
    main = stack.procs[SERVING["cpu"]].pid
    children = _children(main)
    assert len(children) == 2, children
    for pid in children:
        os.kill(pid, 9)
    wait_until(lambda: len(set(_children(main)) - set(children)) == 2, 30,
               "the pool to replace both children")
    after = worker(stack, "cpu")
    assert after.value("longdoc_ingest_pages_total", kind="pdf") == pages
    assert after.value("longdoc_tasks_total", task="longdoc.ingest_document") == before.value(
        "longdoc_tasks_total", task="longdoc.ingest_document")
    wait_document(client, upload(client, "k2.pdf", data=text_pdf(4, seed=62)).json()["id"])
    assert worker(stack, "cpu").value("longdoc_ingest_pages_total", kind="pdf") == pages + 4


def test_a_killed_model_worker_leaves_no_call_in_flight(stack: Stack, client: httpx.Client) -> None:
    doc = wait_document(client, upload(client, "f.png", data=png(7)).json()["id"])
    stack.sandbox(ttft_s=10)
    job_id = submit(client, doc["id"], instructions="in flight")
    wait_until(lambda: worker(stack, "model").value("longdoc_model_calls_in_flight",
                                                    model=MODEL) == 1, 30, "the call in flight")
    dead = stack.procs[SERVING["model"]].pid
    own_dir = glob.glob(os.path.join(tempfile.gettempdir(), f"longdoc-metrics-{dead}-*"))
    assert len(own_dir) == 1, "the worker keeps its values in a directory of its own"
    stack.kill(SERVING["model"])
    stack.sandbox()
    stack.start_worker("model", name="model-2")
    SERVING["model"] = "model-2"
    assert not os.path.exists(own_dir[0]), "the dead worker's directory is removed"
    assert worker(stack, "model").value("longdoc_model_calls_in_flight", model=MODEL) == 0
    assert wait_job(client, job_id, 60)["status"] == "succeeded"
    after = worker(stack, "model")
    assert after.value("longdoc_model_calls_in_flight", model=MODEL) == 0
    assert after.value("longdoc_model_call_duration_seconds_count", outcome="ok") == 1


def test_metrics_answer_while_redis_is_down(stack: Stack) -> None:
    stack.stop_redis()
    try:
        seen = api(stack)
        assert seen.value("longdoc_jobs", status="succeeded") > 0, "the database still counts"
        assert not seen.has("longdoc_queue_messages"), "no figure for a broker that is down"
        assert worker(stack, "model").has("longdoc_model_tokens_total")
        assert worker(stack, "cpu").has("longdoc_ingest_pages_total")
    finally:
        stack.start_redis()
    assert api(stack).has("longdoc_queue_messages")


def test_a_worker_whose_metrics_port_is_taken_still_works_and_says_so(stack: Stack) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        stack._spawn("cpu-taken", [
            sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", "cpu",
            "-P", "prefork", "-c", "1", "-n", "cpu-taken@%h", "--without-gossip",
            "--without-mingle", "--loglevel", "INFO"], env={"LONGDOC_METRICS_PORT": str(port)})
        try:
            stack.wait_worker("cpu-taken")
            log = (stack.tmp / "cpu-taken.log").read_text()
            assert '"metrics.server_failed"' in log and f'"port": {port}' in log
        finally:
            stack.kill("cpu-taken")
