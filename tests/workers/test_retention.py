"""Retention, as beat runs it: what is due is deleted from the database and from storage, never
before it is due, and never while an unfinished job still reads it."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.pdfgen import text_pdf
from tests.support.records import places, query, stored
from tests.support.stack import Stack, start_stack, upload, wait_document, wait_job, wait_until

SCHEMA = {"type": "object", "required": ["title"], "properties": {"title": {"type": "string"}}}
FAST_PURGE = {"LONGDOC_PURGE_INTERVAL_S": "1"}


@pytest.fixture(scope="module")
def purging(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The default retention (30 days), purged every second."""
    s = start_stack(tmp_path_factory.mktemp("retention"), env_extra=FAST_PURGE)
    yield s
    s.stop()


def key_for(stack: Stack) -> str:
    name = f"keeper-{secrets.token_hex(3)}"
    return str(json.loads(stack.longdoc(["tenants", "create", "--tenant", name]))["api_key"])


def ready(client: httpx.Client, pages: int, seed: int) -> dict[str, Any]:
    doc = wait_document(client, upload(client, f"d{seed}.pdf",
                                       data=text_pdf(pages, lines=12, seed=seed)).json()["id"])
    assert doc["status"] == "ready", doc
    return doc


def start(client: httpx.Client, doc_ids: list[str], **extra: Any) -> str:
    response = client.post("/v1/jobs", json={"document_ids": doc_ids, "schema": SCHEMA, **extra})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def files_of(stack: Stack, doc: dict[str, Any]) -> set[str]:
    blobs = query(stack, "SELECT key FROM document_blobs WHERE document_id = ?", (doc["id"],))
    return {doc["sha256"], *(key for (key,) in blobs)}


def at(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def test_a_delete_documents_job_leaves_no_document_behind(purging: Stack) -> None:
    stack = purging
    with stack.client(key_for(stack)) as client:
        shared, own = ready(client, 2, 1), ready(client, 2, 2)
        files = files_of(stack, shared) | files_of(stack, own)
        try:
            stack.sandbox(ttft_s=10)
            reader = start(client, [shared["id"]])  # another job, still running, reads it
            wait_until(lambda: stack.sandbox_stats()["in_flight"] >= 1, 30, "its call in flight")
        finally:
            stack.sandbox()
        job = start(client, [shared["id"], own["id"]], delete_documents=True)
        assert wait_job(client, job)["status"] == "succeeded"

        wait_until(lambda: client.get(f"/v1/documents/{own['id']}").status_code == 404, 30,
                   "the purge to delete the document only that job read")
        still = client.get(f"/v1/documents/{shared['id']}")
        assert still.status_code == 200, "a running job still reads it"
        assert at(still.json()["expires_at"]) <= time.time(), "due as soon as nothing reads it"
        assert client.get(f"/v1/jobs/{job}").json()["document_ids"] == [shared["id"], own["id"]]
        assert client.get(f"/v1/jobs/{job}/result").status_code == 200  # the job's data stays

        assert client.post(f"/v1/jobs/{reader}/cancel").json()["status"] == "canceled"
        wait_until(lambda: client.get(f"/v1/documents/{shared['id']}").status_code == 404, 30,
                   "the purge to delete the shared document once no unfinished job reads it")
        assert not any(stored(stack, key) for key in files)
        assert places(stack, own["id"]).keys() <= {"jobs", "job_events"}
        assert query(stack, "SELECT count(*) FROM documents WHERE id IN (?, ?)",
                     (shared["id"], own["id"]))[0][0] == 0


def test_a_jobs_retention_seconds_deletes_its_data_after_it_ends_never_before(
        purging: Stack) -> None:
    stack = purging
    with stack.client(key_for(stack)) as client:
        doc = ready(client, 1, 3)
        kept = start(client, [doc["id"]])
        # More jobs than one purge transaction takes (100): they go in several batches.
        brief = [start(client, [doc["id"]], retention_seconds=5) for _ in range(130)]
        assert wait_job(client, kept)["status"] == "succeeded"

        def view(job_id: str) -> dict[str, Any] | None:
            response = client.get(f"/v1/jobs/{job_id}")
            return response.json() if response.status_code == 200 else None

        last = wait_until(lambda: (v := view(brief[-1])) and v["expires_at"] and v, 60,
                          "the last job's purge time")
        assert at(last["expires_at"]) - at(last["finished_at"]) == pytest.approx(5, abs=1e-3)
        wait_until(lambda: view(brief[-1]) is None, 60, "the last job to be purged")
        assert time.time() >= at(last["expires_at"]), "purged only once due"
        assert all(view(j) is None for j in brief), "every job purged, in several batches"
        assert query(stack, "SELECT count(*) FROM jobs WHERE id IN ({})".format(
            ",".join("?" * len(brief))), tuple(brief))[0][0] == 0
        assert query(stack, "SELECT count(*) FROM model_calls WHERE job_id IN ({})".format(
            ",".join("?" * len(brief))), tuple(brief))[0][0] == 0
        assert view(kept) is not None and client.get(f"/v1/documents/{doc['id']}").status_code == 200


def test_a_job_of_hundreds_of_chunks_is_deleted_by_the_purge_in_slices(purging: Stack) -> None:
    stack = purging
    with stack.client(key_for(stack)) as client:
        big = wait_document(client, upload(client, "big.pdf", data=text_pdf(2100, lines=60))
                            .json()["id"], 180)
        assert big["status"] == "ready"
        job = start(client, [big["id"]], max_tokens_per_call=4096, max_output_tokens=256)
        chunks = client.get(f"/v1/jobs/{job}").json()["progress"]["chunks_total"]
        assert chunks * 3 > 2000, "more rows than one purge transaction deletes"
        deleting = client.delete(f"/v1/jobs/{job}")
        assert deleting.status_code == 202 and deleting.json()["status"] == "canceled"
        wait_until(lambda: client.get(f"/v1/jobs/{job}").status_code == 404, 120,
                   "the purge to delete the job, slice by slice")
        for table in ("chunks", "model_calls", "job_events", "results"):
            assert query(stack, f"SELECT count(*) FROM {table} WHERE job_id = ?", (job,))[0][0] == 0


def test_a_job_deleted_while_it_is_planned_goes_once_planning_lets_go(purging: Stack) -> None:
    stack = purging
    with stack.client(key_for(stack)) as client:
        doc = ready(client, 150, 6)
        job = start(client, [doc["id"]], pages_as_images=True)  # the plan task renders pages
        wait_until(lambda: query(stack, "SELECT lease_owner FROM jobs WHERE id = ?",
                                 (job,))[0][0], 60, "the plan task to hold the job")
        deleting = client.delete(f"/v1/jobs/{job}")
        assert deleting.status_code == 202, "the plan task holds it: deleted once it lets go"
        wait_until(lambda: client.get(f"/v1/jobs/{job}").status_code == 404, 120,
                   "the purge to delete the job once planning has given it up")
        assert places(stack, job) == {}


def test_documents_and_jobs_are_purged_when_the_retention_period_ends(tmp_path: Path) -> None:
    stack = start_stack(tmp_path, env_extra={**FAST_PURGE, "LONGDOC_RETENTION_SECONDS": "12"})
    try:
        with stack.client(key_for(stack)) as client:
            doc = ready(client, 2, 4)
            files = files_of(stack, doc)
            assert at(doc["expires_at"]) - at(doc["created_at"]) == pytest.approx(12, abs=1)
            job = start(client, [doc["id"]], retention_seconds=3600)  # capped at the deployment's
            ended = wait_job(client, job)
            assert ended["status"] == "succeeded"
            purge_at = wait_until(lambda: client.get(f"/v1/jobs/{job}").json()["expires_at"], 30,
                                  "the job's purge time")
            assert at(purge_at) - at(ended["finished_at"]) == pytest.approx(12, abs=1e-3)

            wait_until(lambda: client.get(f"/v1/documents/{doc['id']}").status_code == 404, 60,
                       "the document's retention to end")
            assert time.time() >= at(doc["expires_at"]), "deleted only once due"
            assert not any(stored(stack, key) for key in files)
            wait_until(lambda: client.get(f"/v1/jobs/{job}").status_code == 404, 60,
                       "the job's retention to end")
            assert time.time() >= at(purge_at)
            assert places(stack, job) == {} and places(stack, doc["id"]) == {}
    finally:
        stack.stop()
