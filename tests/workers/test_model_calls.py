"""Model calls under failure and limits: dead workers, 5xx storms, dropped connections, TPM."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.support.stack import (
    Stack,
    create_job,
    job_calls,
    start_stack,
    upload,
    wait_document,
    wait_job,
    wait_until,
)

SCHEMA = {"type": "object", "required": ["title"], "properties": {"title": {"type": "string"},
                                                                 "amount": {"type": "number"}}}


def png(seed: int = 0, size=(640, 480)) -> bytes:
    img = Image.new("RGB", size, (seed % 255, 80, 160))
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def submit(client: httpx.Client, doc_id: str, **options: Any) -> str:
    return create_job(client, [doc_id], SCHEMA, **options)


def job_mid_call(s: Stack, client: httpx.Client) -> str:
    """Submits a one-image job; returns its id once its model call is in flight."""
    doc = upload(client, "a.png", data=png()).json()
    wait_document(client, doc["id"])
    job_id = submit(client, doc["id"])
    wait_until(lambda: s.sandbox_stats()["in_flight"] >= 1, 30, "the model call to start")
    return job_id


def test_a_worker_killed_mid_call_loses_nothing(tmp_path) -> None:
    # The broker would give the message back only after an hour: recovery comes from the lease.
    s = start_stack(tmp_path, env_extra={"LONGDOC_VISIBILITY_TIMEOUT_S": "3600"},
                    sandbox_args=["--ttft-s", "2.5"])
    try:
        with s.client(s.create_key("kill")["api_key"]) as client:
            job_id = job_mid_call(s, client)
            s.kill("model")  # kill -9 of the whole worker while its call is in flight
            assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "running"
            s.start_worker("model", name="model-2")
            job = wait_job(client, job_id, 90)
            assert job["status"] == "succeeded", job
            calls = job_calls(client, job_id)
            # The killed call is on the books as unknown (it may have been billed), the rerun
            # as answered; usage counts what was reported, the cost the estimate as well.
            assert [c["status"] for c in calls] == ["unknown", "answered"]
            unknown, answered = calls
            assert unknown["cost_usd"] > 0 and unknown["predicted_prompt_tokens"] > 0
            assert job["usage"]["prompt_tokens"] == answered["prompt_tokens"]
            assert job["usage"]["completion_tokens"] == answered["completion_tokens"]
            assert job["usage"]["unknown_calls"] == 1 and job["cost_is_estimate"]
            assert job["cost_usd"] == pytest.approx(unknown["cost_usd"] + answered["cost_usd"])
            assert s.sandbox_stats()["requests"] == 2
            assert client.get(f"/v1/jobs/{job_id}/result").status_code == 200
    finally:
        s.stop()


def test_a_worker_presumed_dead_that_answers_after_all_has_its_answer_used(tmp_path: Path) -> None:
    """A worker too slow to renew its lease (here: stopped mid-call) loses its chunk to the
    sweep, which sends it again. The answer it then brings back was paid for: it is used, and
    the chunk is not asked again."""
    s = start_stack(tmp_path, env_extra={"LONGDOC_VISIBILITY_TIMEOUT_S": "3600"},
                    sandbox_args=["--ttft-s", "2.5"])
    try:
        with s.client(s.create_key("slow")["api_key"]) as client:
            job_id = job_mid_call(s, client)
            s.pause("model")  # alive, but renews nothing and records nothing
            try:
                wait_until(lambda: [c["status"] for c in job_calls(client, job_id)] == ["unknown"], 60,
                    "the sweep to presume the worker dead and book its call as unknown")
            finally:
                s.pause("model", paused=False)
            job = wait_job(client, job_id, 90)
            assert job["status"] == "succeeded", job
            first, *others = job_calls(client, job_id)
            assert first["status"] == "answered" and first["answer_used"], first
            assert first["error"] is None, "answered after all: no longer presumed lost"
            # Its result is the first call's answer; a call sent again meanwhile is not used.
            assert not any(c["answer_used"] for c in others), others
            assert job["usage"]["unknown_calls"] == 0 and not job["cost_is_estimate"]
    finally:
        s.stop()


def test_a_job_whose_last_call_is_still_out_is_deleted_and_charged_once_it_returns(
        tmp_path: Path) -> None:
    """The answer of a worker presumed dead closes the chunk while the worker it was sent again
    to still waits for its own call: the job has ended, but that call is still out. Deleting
    the job waits for it (202), and the tenant is charged for both calls, as the model counted
    them."""
    s = start_stack(tmp_path, env_extra={"LONGDOC_VISIBILITY_TIMEOUT_S": "3600"},
                    sandbox_args=["--ttft-s", "20"])
    try:
        with s.client(s.create_key("late")["api_key"]) as client:
            job_id = job_mid_call(s, client)

            def statuses() -> list[str]:
                return [c["status"] for c in job_calls(client, job_id)]

            s.pause("model")
            try:
                wait_until(lambda: statuses() == ["unknown"], 60,
                           "the sweep to presume the worker dead and book its call as unknown")
            finally:
                s.pause("model", paused=False)
            # Both calls take 20 s: the first answer arrives while the second call is out.
            wait_until(lambda: statuses() == ["unknown", "sent"], 30, "the chunk's second call")
            assert wait_job(client, job_id, 60)["status"] == "succeeded"
            assert statuses() == ["answered", "sent"]
            deleting = client.delete(f"/v1/jobs/{job_id}")
            assert deleting.status_code == 202, deleting.text
            wait_until(lambda: client.get(f"/v1/jobs/{job_id}").status_code == 404, 90,
                       "the job to be deleted once its last call has returned")
            model = s.sandbox_stats()
            assert model["completed"] == 2 and model["in_flight"] == 0, model
            used = client.get("/v1/usage").json()["tokens_per_day"]["used"]
            assert used == model["prompt_tokens"] + model["completion_tokens"]
    finally:
        s.stop()


def test_every_job_succeeds_through_503s_and_dropped_connections(stack: Stack, tenant) -> None:
    stack.sandbox(error_rate=0.3, drop_rate=0.1, seed=5)
    try:
        with stack.client(tenant["api_key"]) as client:
            doc = upload(client, "a.png", data=png(1)).json()
            wait_document(client, doc["id"])
            jobs = [submit(client, doc["id"], instructions=f"Job {i}.") for i in range(20)]
            ended = [wait_job(client, job_id, 120) for job_id in jobs]
            assert [j["status"] for j in ended] == ["succeeded"] * 20
            stats = stack.sandbox_stats()
            assert stats["errors"] >= 3 and stats["dropped"] >= 1, stats
            for job in ended:  # one answer per job; calls that got none cost nothing
                calls = job_calls(client, job["id"])
                answered = [c for c in calls if c["status"] == "answered"]
                assert len(answered) == 1 and {c["status"] for c in calls} <= {"answered", "failed"}
                assert job["usage"]["prompt_tokens"] == answered[0]["prompt_tokens"]
    finally:
        stack.sandbox()


def test_one_worker_keeps_many_calls_in_flight(stack: Stack, tenant) -> None:
    # Calls long enough for 60 submissions to overlap them on a loaded machine (at 1.5 s, a
    # machine busy with other suites submitted too slowly for 40 to be in flight at once).
    stack.sandbox(ttft_s=4)
    try:
        with stack.client(tenant["api_key"]) as client:
            doc = upload(client, "a.png", data=png(2)).json()
            wait_document(client, doc["id"])
            jobs = [submit(client, doc["id"], instructions=f"Batch {i}.") for i in range(60)]
            assert all(wait_job(client, j, 120)["status"] == "succeeded" for j in jobs)
            # Calls overlap instead of queueing behind each other: latency is hidden.
            assert stack.sandbox_stats()["max_in_flight"] >= 40
    finally:
        stack.sandbox()


def test_a_small_tpm_limit_is_waited_for_not_hit(tmp_path) -> None:
    s = start_stack(tmp_path, env_extra={"LONGDOC_RATE_LIMIT_TPM": "24000",
                                        "LONGDOC_RATE_LIMIT_RPM": "300"},
                    sandbox_args=["--tpm", "24000", "--rpm", "300"])
    try:
        with s.client(s.create_key("tpm")["api_key"]) as client:
            doc = upload(client, "a.png", data=png(3)).json()
            wait_document(client, doc["id"])
            jobs = [submit(client, doc["id"], instructions=f"Limit {i}.", max_output_tokens=256)
                    for i in range(30)]
            ended = [wait_job(client, j, 120) for j in jobs]
            assert [j["status"] for j in ended] == ["succeeded"] * 30
            charged = sum(j["usage"]["prompt_tokens"] for j in ended)
            assert charged > 24000, "more than one minute's budget: the limiter had to wait"
            # Without the shared limiter the sandbox would have refused a stream of these.
            assert s.sandbox_stats()["rate_limited"] <= 2
    finally:
        s.stop()


def test_gateway_cost_is_recorded_beside_ours(stack: Stack, tenant) -> None:
    stack.sandbox(gateway_cost=True)
    try:
        with stack.client(tenant["api_key"]) as client:
            doc = upload(client, "a.png", data=png(4)).json()
            wait_document(client, doc["id"])
            job = wait_job(client, submit(client, doc["id"]))
            assert job["gateway_cost_usd"] == pytest.approx(job["cost_usd"], rel=1e-6)
    finally:
        stack.sandbox()


def test_refused_credentials_fail_the_job_without_retrying(stack: Stack, tenant) -> None:
    stack.sandbox(api_key="a-different-key")
    try:
        with stack.client(tenant["api_key"]) as client:
            doc = upload(client, "a.png", data=png(5)).json()
            wait_document(client, doc["id"])
            before = stack.sandbox_stats()["requests"]
            job = wait_job(client, submit(client, doc["id"]))
            assert job["status"] == "failed"
            assert job["error"]["code"] == "model_auth_failed"
            assert stack.sandbox_stats()["requests"] - before == 1
    finally:
        stack.sandbox()


def test_a_task_that_keeps_failing_ends_its_job_instead_of_leaving_it_running(stack: Stack, tenant) -> None:
    import sqlite3

    from service.store.storage import LocalStorage

    with stack.client(tenant["api_key"]) as client:
        doc = upload(client, "lost.png", data=png(6, size=(320, 200))).json()
        wait_document(client, doc["id"])
        db = sqlite3.connect(stack.data_dir / "longdoc.db")
        (pages_key,) = db.execute("SELECT pages_key FROM documents WHERE id = ?", (doc["id"],)).fetchone()
        db.close()
        LocalStorage(stack.data_dir / "files").path(pages_key).unlink()  # storage lost the pages
        job = wait_job(client, submit(client, doc["id"]), 60)
        assert job["status"] == "failed"
        assert job["error"]["code"] == "internal_error"
        assert "FileNotFoundError" in job["error"]["message"]
