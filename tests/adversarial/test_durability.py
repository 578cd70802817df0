"""Durability (issue 10) at the awkward moments the issue's own tests do not hit: a job canceled
while its chunks sit in the broker, kill -9 of the CPU worker while it renders pages for a
``pages_as_images`` plan, kill -9 of the model worker during finalize's merge call, and the
broker losing every message while documents are being ingested."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.adversarial.conftest import db_rows, png
from tests.support.pdfgen import text_pdf
from tests.support.stack import (
    TEST_REDIS_DB,
    Stack,
    start_stack,
    upload,
    wait_document,
    wait_job,
    wait_until,
)

SCHEMA = {"type": "object", "required": ["title"],
          "properties": {"title": {"type": "string"}, "lines": {"type": "array",
                                                               "items": {"type": "string"}}}}


def assert_books_balanced(client: httpx.Client, job: dict[str, Any]) -> list[dict[str, Any]]:
    """Usage counted once, no call left ``sent``."""
    calls = client.get(f"/v1/jobs/{job['id']}/calls").json()["calls"]
    answered = [c for c in calls if c["status"] == "answered"]
    assert job["usage"]["prompt_tokens"] == sum(c["prompt_tokens"] for c in answered)
    assert job["usage"]["completion_tokens"] == sum(c["completion_tokens"] for c in answered)
    left = [(c["purpose"], c["status"]) for c in calls if c["status"] == "sent"]
    assert not left, (f"calls left 'sent' after the job {job['status']}: {left}; "
                      f"cost_is_estimate={job['cost_is_estimate']}")
    return list(calls)


def test_a_canceled_job_gives_its_dispatch_slots_back(tmp_path: Path) -> None:
    """FINDING (high): chunks that were ``dispatched`` (sent, not yet claimed) when their job was
    canceled stay ``dispatched``: ``extract_chunk`` returns at "job not running" without
    touching the chunk and without dispatching the next. They hold their slots of
    ``LONGDOC_DISPATCH_WINDOW`` (shared by every tenant) until the sweep calls them lost
    after ``LONGDOC_REDISPATCH_S`` (60 s by default). A tenant who creates a large job and
    cancels it, again and again, keeps the window full: every other tenant's jobs wait. The
    same happens to the dispatched chunks of a job that fails (``fail_job`` on one chunk).
    Expected: the slots come back as the messages are consumed (chunk back to ``pending`` or a
    terminal state, then ``dispatch``)."""
    s = start_stack(tmp_path, env_extra={"LONGDOC_DISPATCH_WINDOW": "2",
                                         "LONGDOC_REDISPATCH_S": "120"})
    try:
        with s.client(s.create_key("mallory")["api_key"]) as a, \
                s.client(s.create_key("victim")["api_key"]) as b:
            big = upload(a, "big.pdf", data=text_pdf(12, lines=40)).json()
            small = upload(b, "small.png", data=png(7)).json()
            wait_document(a, big["id"])
            wait_document(b, small["id"])
            s.kill("model")  # the chunks wait in the broker, as they do behind a busy worker
            # Two jobs: each sends its first chunk alone (it learns the answer's size before
            # the rest are sent), so together they fill the window of 2.
            jobs_a = []
            for _ in range(2):
                created = a.post("/v1/jobs", json={"document_ids": [big["id"]], "schema": SCHEMA,
                                                   "max_tokens_per_call": 4096,
                                                   "max_output_tokens": 256})
                assert created.status_code == 202, created.text
                jobs_a.append(created.json()["id"])
            chunks = db_rows(s, "SELECT status, count(*) FROM chunks WHERE job_id IN (?, ?) "
                             "GROUP BY status", tuple(jobs_a))
            assert dict(chunks).get("dispatched") == 2, chunks
            for job_a in jobs_a:
                assert a.post(f"/v1/jobs/{job_a}/cancel").json()["status"] == "canceled"
            s.start_worker("model", name="model-2")
            wait_until(s.broker_idle, 60, "the canceled job's messages to be consumed")
            job_b = b.post("/v1/jobs", json={"document_ids": [small["id"]],
                                             "schema": SCHEMA}).json()["id"]
            try:
                victim: dict[str, Any] | str = wait_job(b, job_b, 30)
            except AssertionError:
                victim = b.get(f"/v1/jobs/{job_b}").json()["status"]
            held = db_rows(s, "SELECT count(*) FROM chunks WHERE job_id IN (?, ?) "
                           "AND status = 'dispatched'", tuple(jobs_a))[0][0]
            assert held == 0 and isinstance(victim, dict), (
                f"{held} chunks of the canceled jobs still 'dispatched' (the whole window); "
                f"another tenant's one-call job 30 s later: "
                f"{victim if isinstance(victim, str) else victim['status']}")
    finally:
        s.stop()


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack with a Redis of its own (it is flushed) and a slow-ish model (calls in flight)."""
    s = start_stack(tmp_path_factory.mktemp("faults"), private_redis=True,
                    env_extra={"LONGDOC_VISIBILITY_TIMEOUT_S": "3600"})
    yield s
    s.stop()


def test_flushall_during_ingestion_loses_no_document(faults: Stack) -> None:
    """Held: every document still processing when the broker forgets everything is sent again
    by the sweep, and its waiting job runs."""
    with faults.client(faults.create_key("flush-ingest")["api_key"]) as client:
        docs = [upload(client, f"f{i}.pdf", data=text_pdf(8, lines=40, seed=i)).json()["id"]
                for i in range(4)]
        jobs = [client.post("/v1/jobs", json={"document_ids": [d], "schema": SCHEMA}).json()["id"]
                for d in docs]
        redis.Redis(port=faults.redis_port, db=TEST_REDIS_DB).flushall()
        ended = [wait_job(client, j, 120) for j in jobs]
        assert [j["status"] for j in ended] == ["succeeded"] * len(jobs), ended
        for job in ended:
            assert_books_balanced(client, job)


def test_kill_9_of_the_cpu_worker_while_it_plans_a_pages_as_images_job(faults: Stack) -> None:
    """Held: the planning lease lapses, the sweep sends ``plan_job`` again (attempt counted) and
    the job runs once, with every page rendered."""
    with faults.client(faults.create_key("render")["api_key"]) as client:
        doc = upload(client, "r.pdf", data=text_pdf(30, lines=20)).json()
        wait_document(client, doc["id"])
        job_id = client.post("/v1/jobs", json={"document_ids": [doc["id"]], "schema": SCHEMA,
                                               "pages_as_images": True}).json()["id"]
        wait_until(lambda: db_rows(faults, "SELECT lease_owner FROM jobs WHERE id = ? AND "
                                           "status = 'queued'", (job_id,)) and
                   db_rows(faults, "SELECT lease_owner FROM jobs WHERE id = ?", (job_id,))[0][0],
                   60, "the CPU worker to claim the plan (rendering pages)")
        faults.kill("cpu")
        faults.start_worker("cpu", name="cpu-2")
        job = wait_job(client, job_id, 180)
        assert job["status"] == "succeeded", job
        assert_books_balanced(client, job)
        attempts = db_rows(faults, "SELECT attempts FROM jobs WHERE id = ?", (job_id,))[0][0]
        assert attempts >= 1, "the interrupted plan was counted"


def test_kill_9_of_the_model_worker_during_the_merge_call_of_finalize(faults: Stack) -> None:
    """FINDING (medium): ``merge: model`` makes finalize call the model. Killed then, the job's
    lease lapses and the sweep sends finalize again (``_jobs_to_finalize``), which succeeds —
    but nothing marks the dead worker's merge call: it stays ``sent`` for good, is not in the
    cost (``cost_is_estimate`` false), though the endpoint may have billed it. (Only
    ``record_failure``, for a task that raised, marks merge calls; the sweep marks chunk calls
    only.) Expected: booked ``unknown`` with its predicted prompt, as chunk calls are."""
    faults.sandbox(ttft_s=2.0)
    try:
        with faults.client(faults.create_key("merge")["api_key"]) as client:
            doc = upload(client, "m.pdf", data=text_pdf(12, lines=40, seed=5)).json()
            wait_document(client, doc["id"])
            job_id = client.post("/v1/jobs", json={
                "document_ids": [doc["id"]], "schema": SCHEMA, "merge": "model",
                "max_tokens_per_call": 4096, "max_output_tokens": 256}).json()["id"]
            wait_until(lambda: db_rows(faults, "SELECT 1 FROM model_calls WHERE job_id = ? AND "
                                               "purpose = 'merge' AND status = 'sent'", (job_id,)),
                       120, "finalize's merge call in flight")
            faults.kill("model")
            faults.start_worker("model", name="model-merge")
            job = wait_job(client, job_id, 120)
            assert job["status"] == "succeeded", job
            calls = assert_books_balanced(client, job)
            assert "unknown" in [c["status"] for c in calls]
            assert db_rows(faults, "SELECT count(*) FROM results WHERE job_id = ?", (job_id,))[0][0] == 1
    finally:
        faults.sandbox()


def test_kill_9_of_beat_then_lost_messages_recover_once_it_is_back(faults: Stack) -> None:
    """Held: with beat killed (kill -9, its schedule file as it was) nothing re-sends lost
    messages; restarted on the same schedule file, it sweeps and every job finishes."""
    import sys

    faults.kill("beat")
    with faults.client(faults.create_key("beat")["api_key"]) as client:
        docs = [upload(client, f"b{i}.png", data=png(60 + i)).json()["id"] for i in range(3)]
        jobs = [client.post("/v1/jobs", json={"document_ids": [d], "schema": SCHEMA}).json()["id"]
                for d in docs]
        redis.Redis(port=faults.redis_port, db=TEST_REDIS_DB).flushall()
        faults._spawn("beat", [sys.executable, "-m", "celery", "-A", "workers.celery_app", "beat",
                               "--loglevel", "WARNING", "-s", str(faults.data_dir / "beat-schedule")])
        ended = [wait_job(client, j, 120) for j in jobs]
        assert [j["status"] for j in ended] == ["succeeded"] * len(jobs), ended
