"""200 jobs through two APIs and three workers that share nothing but PostgreSQL, the S3
server and the broker, while a worker of each queue is killed -9 and restarted: every job ends
``succeeded`` with its result, its usage counted once and no model call left ``sent``.

Once with Redis and once with RabbitMQ as the broker. Recovery comes from leases and the
recovery sweep (Redis's visibility timeout stays at an hour).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.cluster.cluster import Cluster
from tests.metrics.scrape import scrape
from tests.support.pdfgen import text_pdf
from tests.support.stack import CORPUS, upload, wait_job, wait_until

SCHEMA = {"type": "object", "required": ["title"],
          "properties": {"title": {"type": "string"}, "parties": {"type": "array",
                                                                 "items": {"type": "string"}}}}
JOBS_PER_DOCUMENT = 5
PASSWORD_PDF = CORPUS / "005-libreoffice-writer-password" / "libreoffice-writer-password.pdf"


@pytest.fixture(params=["redis", "rabbitmq"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    # Calls take half a second, so killing a model worker catches calls in flight.
    c = Cluster(tmp_path, broker=str(request.param), sandbox_args=["--ttft-s", "0.5"])
    try:
        c.start()
        yield c
    except BaseException:
        print(c.logs())
        raise
    finally:
        c.stop()


def png(seed: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (320, 240), (seed * 29 % 255, 80, 140)).save(out, "PNG")
    return out.getvalue()


def documents(first: int, count: int) -> list[tuple[str, bytes, str | None]]:
    """Text PDFs and images (name, bytes, password); the first batch also has an encrypted
    PDF, which one API seals and the CPU worker, with another data dir, must open."""
    out: list[tuple[str, bytes, str | None]] = []
    for i in range(first, first + count):
        out.append((f"d{i}.pdf", text_pdf(2 + i % 3, lines=20, seed=i), None) if i % 4
                   else (f"d{i}.png", png(i), None))
    if first == 0:
        out[-1] = ("locked.pdf", PASSWORD_PDF.read_bytes(), "openpassword")
    return out


def submit_batch(clients: list[httpx.Client], docs: list[tuple[str, bytes, str | None]],
                 offset: int) -> list[tuple[int, str]]:
    """Each document uploaded to one API, its jobs spread over both: (API index, job id)."""
    jobs = []
    for n, (name, data, password) in enumerate(docs):
        created = upload(clients[(offset + n) % 2], name, data=data, password=password)
        assert created.status_code == 201, created.text
        for k in range(JOBS_PER_DOCUMENT):
            api = (offset + n + k) % 2
            response = clients[api].post("/v1/jobs", json={
                "document_ids": [created.json()["id"]], "schema": SCHEMA,
                "instructions": f"run {k}"})
            assert response.status_code == 202, response.text
            jobs.append((api, str(response.json()["id"])))
    return jobs


def queued(cluster: Cluster, queue: str) -> float:
    """Messages waiting in ``queue`` as either API reports them (they ask the same broker)."""
    return max(scrape(f"{cluster.url(api)}/metrics").value("longdoc_queue_messages", queue=queue)
               for api in ("api-1", "api-2"))


@pytest.mark.cluster
def test_200_jobs_across_two_apis_survive_kill_9_of_a_worker_of_each_queue(
        cluster: Cluster) -> None:
    key = json.loads(cluster.run_cli(["keys", "create", "--tenant", "c"], "cli"))
    clients = [cluster.client(api, key["api_key"]) for api in ("api-1", "api-2")]
    try:
        jobs = submit_batch(clients, documents(0, 20), 0)
        wait_until(lambda: any(d["status"] == "ready" for d in clients[0].get(
            "/v1/documents", params={"limit": 500}).json()["data"]), 60, "ingestion under way")
        cluster.kill("cpu")  # mid-ingestion: its pool and any parser it forked
        jobs += submit_batch(clients, documents(20, 20), 1)
        # Nothing consumes the cpu queue now: the uploads wait in the broker.
        wait_until(lambda: queued(cluster, "cpu") >= 1, 30, "a backlog in the cpu queue")
        cluster.start_worker("cpu-2")
        wait_until(lambda: cluster.sandbox_stats()["in_flight"] >= 2, 90, "model calls in flight")
        cluster.kill("model-a")  # calls in flight
        cluster.start_worker("model-a2")
        assert len(jobs) == 200
        ended = [wait_job(clients[api], job_id, 240) for api, job_id in jobs]
        failed = [(j["id"], j["status"], j.get("error")) for j in ended if j["status"] != "succeeded"]
        assert not failed, failed
        on_books = 0
        for (api, job_id), job in zip(jobs, ended, strict=True):
            other = clients[1 - api]  # any API answers for any job
            assert other.get(f"/v1/jobs/{job_id}/result").status_code == 200
            calls = other.get(f"/v1/jobs/{job_id}/calls").json()["calls"]
            answered = [c for c in calls if c["status"] == "answered"]
            assert all(c["status"] in ("answered", "unknown") for c in calls), calls
            # A worker slowed past its lease may answer a chunk the sweep gave to another:
            # both calls were billed, both are on the books, the result is stored once.
            assert {c["chunk_id"] for c in answered} == {c["chunk_id"] for c in calls}
            for kind in ("prompt_tokens", "completion_tokens", "cached_tokens"):
                assert job["usage"][kind] == sum(c[kind] for c in answered), "usage counted once"
            on_books += len(calls)
        completed = cluster.sandbox_stats()["completed"]
        assert on_books >= completed, f"the sandbox answered {completed}, {on_books} on the books"
        wait_until(lambda: queued(cluster, "cpu") == queued(cluster, "model") == 0, 60,
                   "both queues to drain (nothing left behind in the broker)")
    finally:
        for client in clients:
            client.close()
