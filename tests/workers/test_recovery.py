"""Nothing lost, nothing stuck: faults as an operator sees them, on SQLite and PostgreSQL.

Each test ends with every job succeeded, one result each, usage counted once (the job's usage is
the sum of its answered calls) and every answer the sandbox gave on the books in ``/calls``.
Recovery comes from leases and the recovery sweep (5 s each in tests), never from the broker's
visibility timeout, which is left at an hour.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from PIL import Image

from tests.support.pdfgen import text_pdf
from tests.support.stack import (
    ROOT,
    TEST_REDIS_DB,
    Stack,
    create_job,
    free_port,
    start_stack,
    upload,
    wait_document,
    wait_http,
    wait_job,
    wait_until,
)

SCHEMA = {"type": "object", "required": ["title"],
          "properties": {"title": {"type": "string"}, "lines": {"type": "array",
                                                               "items": {"type": "string"}}}}
HOUR = {"LONGDOC_VISIBILITY_TIMEOUT_S": "3600"}


def png(seed: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (320, 200), (seed * 37 % 255, 120, 60)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def submit(client: httpx.Client, doc_ids: list[str], **extra: Any) -> str:
    return create_job(client, doc_ids, SCHEMA, **extra)


def assert_all_done_once(client: httpx.Client, job_ids: list[str], stack: Stack,
                         timeout: float = 180) -> list[dict[str, Any]]:
    ended = [wait_job(client, job_id, timeout) for job_id in job_ids]
    assert [j["status"] for j in ended] == ["succeeded"] * len(job_ids), [
        (j["id"], j["status"], j.get("error")) for j in ended if j["status"] != "succeeded"]
    on_books = 0
    for job in ended:
        assert client.get(f"/v1/jobs/{job['id']}/result").status_code == 200
        calls = client.get(f"/v1/jobs/{job['id']}/calls").json()["calls"]
        answered = [c for c in calls if c["status"] == "answered"]
        assert job["usage"]["prompt_tokens"] == sum(c["prompt_tokens"] for c in answered)
        assert job["usage"]["completion_tokens"] == sum(c["completion_tokens"] for c in answered)
        assert all(c["status"] != "sent" for c in calls), "no call is left in flight"
        on_books += sum(1 for c in calls if c["status"] in ("answered", "unknown"))
    completed = stack.sandbox_stats()["completed"]
    assert on_books >= completed, f"the sandbox answered {completed} calls, {on_books} on the books"
    return ended


def test_kill_9_of_each_worker_role_mid_load(tmp_path: Path, database: str) -> None:
    s = start_stack(tmp_path, database=database, env_extra=HOUR, sandbox_args=["--ttft-s", "1"])
    try:
        with s.client(s.create_key("kills")["api_key"]) as client:
            docs = [upload(client, f"p{i}.pdf", data=text_pdf(40, lines=30, seed=i)).json()["id"]
                    for i in range(6)]
            images = [upload(client, f"i{i}.png", data=png(i)).json()["id"] for i in range(6)]
            jobs = [submit(client, [d]) for d in docs + images]
            s.kill("cpu")  # ingestion in full swing
            s.start_worker("cpu", name="cpu-2")
            wait_until(lambda: s.sandbox_stats()["in_flight"] >= 3, 60, "model calls in flight")
            s.kill("model")  # calls in flight
            s.start_worker("model", name="model-2")
            assert_all_done_once(client, jobs, s)
    finally:
        s.stop()


def test_every_job_finishes_when_the_broker_loses_every_message(tmp_path: Path, database: str) -> None:
    s = start_stack(tmp_path, database=database, env_extra=HOUR, private_redis=True,
                    sandbox_args=["--ttft-s", "0.5"])
    try:
        with s.client(s.create_key("flush")["api_key"]) as client:
            doc = upload(client, "long.pdf", data=text_pdf(24, lines=40)).json()
            wait_document(client, doc["id"])
            jobs = [submit(client, [doc["id"]], instructions=f"run {i}", max_tokens_per_call=4096,
                           max_output_tokens=256) for i in range(4)]
            wait_until(lambda: s.sandbox_stats()["in_flight"] >= 2, 60, "calls in flight")
            redis.Redis(port=s.redis_port, db=TEST_REDIS_DB).flushall()
            assert_all_done_once(client, jobs, s)
    finally:
        s.stop()


def test_submitting_works_while_the_broker_is_down(tmp_path: Path, database: str) -> None:
    s = start_stack(tmp_path, database=database, env_extra=HOUR, private_redis=True)
    try:
        with s.client(s.create_key("down")["api_key"]) as client:
            ready = upload(client, "ready.png", data=png(1)).json()
            wait_document(client, ready["id"])
            s.stop_redis()
            created = upload(client, "later.png", data=png(2))
            assert created.status_code == 201, created.text
            jobs = []
            for doc_id in (ready["id"], created.json()["id"]):
                response = client.post("/v1/jobs", json={"document_ids": [doc_id], "schema": SCHEMA})
                assert response.status_code == 202 and response.json()["status"] in ("queued", "running")
                jobs.append(response.json()["id"])
            broken = client.get("/readyz")
            assert broken.status_code == 503 and set(broken.json()) >= {"error"}
            s.start_redis()
            assert_all_done_once(client, jobs, s)
    finally:
        s.stop()


def test_jobs_submitted_while_the_api_is_killed_all_finish(tmp_path: Path) -> None:
    s = start_stack(tmp_path, env_extra=HOUR)
    try:
        with s.client(s.create_key("api")["api_key"]) as client:
            doc = upload(client, "a.png", data=png(3)).json()
            wait_document(client, doc["id"])
            jobs = [submit(client, [doc["id"]], instructions=f"burst {i}") for i in range(10)]
            s.kill("api")
            s._spawn("api", [sys.executable, "-m", "uvicorn", "service.api.app:create_app",
                             "--factory", "--host", "127.0.0.1", "--port", str(s.api_port),
                             "--no-access-log"])
            wait_http(f"{s.url}/healthz", 60)
            assert_all_done_once(client, jobs, s)
    finally:
        s.stop()


def test_a_model_outage_costs_latency_not_the_job(tmp_path: Path) -> None:
    s = start_stack(tmp_path, env_extra={"LONGDOC_MODEL_MAX_RETRY_S": "2",
                                         "LONGDOC_MODEL_MAX_ATTEMPTS": "2"})
    try:
        s.sandbox(error_rate=1.0)
        with s.client(s.create_key("outage")["api_key"]) as client:
            doc = upload(client, "a.png", data=png(4)).json()
            wait_document(client, doc["id"])
            job_id = submit(client, [doc["id"]])
            waiting = wait_until(lambda: client.get(f"/v1/jobs/{job_id}").json()["waiting"], 60,
                                 "the job to say it waits for the model")
            assert waiting["reason"] == "model_unavailable"
            s.sandbox()  # the model is back
            job = wait_job(client, job_id, 120)
            assert job["status"] == "succeeded" and job["waiting"] is None
            statuses = [c["status"] for c in client.get(f"/v1/jobs/{job_id}/calls").json()["calls"]]
            assert statuses[-1] == "answered" and set(statuses[:-1]) == {"failed"}
    finally:
        s.stop()


def test_an_outage_longer_than_the_limit_fails_and_billing_errors_fail_at_once(tmp_path: Path) -> None:
    s = start_stack(tmp_path, env_extra={"LONGDOC_MODEL_MAX_RETRY_S": "1",
                                         "LONGDOC_MODEL_MAX_ATTEMPTS": "2",
                                         "LONGDOC_MODEL_OUTAGE_S": "6"})
    try:
        with s.client(s.create_key("limits")["api_key"]) as client:
            doc = upload(client, "a.png", data=png(5)).json()
            wait_document(client, doc["id"])
            s.sandbox(error_rate=1.0)
            job = wait_job(client, submit(client, [doc["id"]]), 90)
            assert job["status"] == "failed" and job["error"]["code"] == "model_unavailable"
            for fault, code in (("insufficient_quota", "model_quota_exhausted"),
                                ("model_not_found", "model_not_found")):
                s.sandbox(fail_with=fault)
                before = s.sandbox_stats()["requests"]
                job = wait_job(client, submit(client, [doc["id"]], instructions=fault), 60)
                assert job["status"] == "failed" and job["error"]["code"] == code
                assert s.sandbox_stats()["requests"] - before == 1, "never retried"
    finally:
        s.stop()


def test_an_idempotency_key_makes_a_retry_return_the_original(tmp_path: Path) -> None:
    s = start_stack(tmp_path)
    try:
        with s.client(s.create_key("idem")["api_key"]) as client:
            image = png(6)
            first = client.post("/v1/documents", files={"file": ("a.png", image)},
                                headers={"Idempotency-Key": "upload-1"})
            again = client.post("/v1/documents", files={"file": ("a.png", image)},
                                headers={"Idempotency-Key": "upload-1"})
            assert first.status_code == again.status_code == 201
            assert again.json()["id"] == first.json()["id"]
            assert again.headers["idempotent-replayed"] == "true"
            other = client.post("/v1/documents", files={"file": ("b.png", png(7))},
                                headers={"Idempotency-Key": "upload-1"})
            assert other.status_code == 422
            assert other.json()["error"]["code"] == "idempotency_key_reused"
            doc_id = first.json()["id"]
            wait_document(client, doc_id)
            body = {"document_ids": [doc_id], "schema": SCHEMA}
            jobs = [client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "job-1"})
                    for _ in range(3)]
            assert {r.status_code for r in jobs} == {202}
            assert len({r.json()["id"] for r in jobs}) == 1
            assert jobs[1].headers["location"] == f"/v1/jobs/{jobs[0].json()['id']}"
            listed = client.get("/v1/jobs").json()["data"]
            assert [j["id"] for j in listed] == [jobs[0].json()["id"]], "one job, not three"
            reused = client.post("/v1/jobs", json={**body, "instructions": "different"},
                                 headers={"Idempotency-Key": "job-1"})
            assert reused.status_code == 422
            assert reused.json()["error"]["code"] == "idempotency_key_reused"
            bad = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "x" * 300})
            assert bad.status_code == 422
    finally:
        s.stop()


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def longdoc_run(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """`longdoc run` as an operator starts it: its own sandbox (at the seed latency), on the
    port after the API's."""
    port = free_port()
    while not _free(port + 1):
        port = free_port()
    env = {**os.environ, "LONGDOC_DATA_DIR": str(tmp_path / "data"), "LONGDOC_PORT": str(port),
           "LONGDOC_REDIS_URL": f"redis://127.0.0.1:6379/{TEST_REDIS_DB}",
           "LONGDOC_QUEUE_PREFIX": f"ldrun-{port}:", "LONGDOC_DATABASE_URL": "",
           "LONGDOC_MODEL_API_KEY": "", "OPPER_API_KEY": "", "OPENAI_API_KEY": "",
           "LONGDOC_MODEL_BASE_URL": "", "LONGDOC_LEASE_S": "5", "LONGDOC_REDISPATCH_S": "5",
           "LONGDOC_SWEEP_INTERVAL_S": "1", "LONGDOC_SHUTDOWN_GRACE_S": "3",
           "LONGDOC_LOG_LEVEL": "WARNING"}
    state: dict[str, Any] = {"url": f"http://127.0.0.1:{port}", "env": env, "procs": []}

    def start() -> subprocess.Popen[bytes]:
        log = open(tmp_path / "run.log", "ab")  # noqa: SIM115 - owned by the process
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", "run"], env=env, cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        state["procs"].append(proc)
        wait_http(f"{state['url']}/healthz", 90, [proc])
        wait_until(lambda: (tmp_path / "data" / "dev-api-key").exists(), 30, "the dev key")
        return proc

    state["start"] = start
    yield state
    for proc in state["procs"]:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def test_sigterm_of_longdoc_run_mid_load_then_restart_finishes_every_job(
        longdoc_run: dict[str, Any], tmp_path: Path) -> None:
    run = longdoc_run["start"]()
    key = (tmp_path / "data" / "dev-api-key").read_text().strip()
    with httpx.Client(base_url=longdoc_run["url"], headers={"Authorization": f"Bearer {key}"},
                      timeout=60) as client:
        doc = upload(client, "a.pdf", data=text_pdf(6, lines=30)).json()
        wait_document(client, doc["id"])
        jobs = [submit(client, [doc["id"]], instructions=f"run {i}") for i in range(12)]
        wait_until(lambda: any(client.get(f"/v1/jobs/{j}").json()["usage"]["prompt_tokens"]
                               for j in jobs), 60, "the first answers")
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=60)
        assert run.returncode == 0
        longdoc_run["start"]()
        ended = [wait_job(client, j, 180) for j in jobs]
        assert [j["status"] for j in ended] == ["succeeded"] * len(jobs), [
            (j["status"], j.get("error")) for j in ended]
        for job in ended:
            calls = client.get(f"/v1/jobs/{job['id']}/calls").json()["calls"]
            answered = [c for c in calls if c["status"] == "answered"]
            assert job["usage"]["prompt_tokens"] == sum(c["prompt_tokens"] for c in answered)
            # Drained, not cut off: calls in flight at SIGTERM finished (the sandbox stops last).
            assert [c["status"] for c in calls] == ["answered"]
