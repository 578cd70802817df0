"""Two tenants on one stack: A with a backlog of queued chunks, B with a one-page job. What B
waits is read from the database afterwards (timestamps of rows), not from a clock in the test."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from tests.support.records import query
from tests.support.stack import Stack, wait_job, wait_until

SCHEMA = {"type": "object", "required": ["title"], "properties": {"title": {"type": "string"}}}
# Small calls, so a document of a few hundred pages makes hundreds of chunks.
SMALL_CALLS = {"max_tokens_per_call": 4096, "max_output_tokens": 256}


def moment(value: Any) -> datetime:
    """A timestamp as either database or the API gives it, as an aware UTC datetime."""
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def backlog(client: httpx.Client, doc_id: str, chunks: int) -> list[str]:
    """Jobs of small calls on the document until they hold at least ``chunks`` chunks."""
    plan = client.post("/v1/jobs", json={"document_ids": [doc_id], "schema": SCHEMA,
                                         "dry_run": True, **SMALL_CALLS})
    assert plan.status_code == 200, plan.text
    per_job = plan.json()["plan"]["calls"]
    jobs: list[str] = []
    while len(jobs) * per_job < chunks:
        response = client.post("/v1/jobs", json={"document_ids": [doc_id], "schema": SCHEMA,
                                                 **SMALL_CALLS})
        assert response.status_code == 202, response.text
        jobs.append(response.json()["id"])
    return jobs


def chunk_counts(stack: Stack, tenant_id: str) -> dict[str, int]:
    """The tenant's chunks by status, those of its running jobs only (a canceled job's chunks
    wait for nothing)."""
    rows = query(stack, "SELECT c.status, count(*) FROM chunks c JOIN jobs j ON j.id = c.job_id "
                        "WHERE c.tenant_id = ? AND (j.status = 'running' OR c.status = 'running') "
                        "GROUP BY c.status", (tenant_id,))
    return {status: int(n) for status, n in rows}


@dataclass
class Wait:
    """How one-page job B fared beside A's backlog."""

    backlog: int  # A's chunks not done when B was created
    latency_s: float  # B created -> B finished (its rows' timestamps)
    call_s: float  # B's own model call
    a_done_meanwhile: int  # A's chunks that finished between B's creation and its end
    a_left_after: int  # A's chunks still not done when B finished
    # Where B's time went: created -> its chunk dispatched -> claimed by a worker (the broker's
    # queue) -> the job finished (the call and recording it).
    to_dispatch_s: float
    in_broker_s: float
    to_end_s: float

    @property
    def calls(self) -> float:
        return self.latency_s / self.call_s


def one_page_job(stack: Stack, client_b: httpx.Client, doc_b: str, tenant_a: str) -> Wait:
    """Creates B's job now and waits for it; what A did meanwhile is counted from A's chunks."""
    counts = chunk_counts(stack, tenant_a)
    waiting = sum(counts.get(s, 0) for s in ("pending", "dispatched", "running"))
    response = client_b.post("/v1/jobs", json={"document_ids": [doc_b], "schema": SCHEMA})
    assert response.status_code == 202, response.text
    job = wait_job(client_b, response.json()["id"], timeout=300)
    assert job["status"] == "succeeded", job
    created, finished = moment(job["created_at"]), moment(job["finished_at"])
    calls = client_b.get(f"/v1/jobs/{job['id']}/calls").json()["calls"]
    done_at = [moment(at) for (at,) in query(
        stack, "SELECT updated_at FROM chunks WHERE tenant_id = ? AND status = 'done'", (tenant_a,))]
    meanwhile = sum(1 for at in done_at if created < at <= finished)
    dispatched = moment(query(stack, "SELECT dispatched_at FROM chunks WHERE job_id = ?",
                              (job["id"],))[0][0])
    claimed = moment(calls[0]["at"])  # the call's row is written when the chunk is claimed
    return Wait(backlog=waiting, latency_s=(finished - created).total_seconds(),
                call_s=calls[0]["latency_ms"] / 1000, a_done_meanwhile=meanwhile,
                a_left_after=waiting - meanwhile,
                to_dispatch_s=(dispatched - created).total_seconds(),
                in_broker_s=(claimed - dispatched).total_seconds(),
                to_end_s=(finished - claimed).total_seconds())


def drain(stack: Stack, client_a: httpx.Client, jobs: list[str]) -> None:
    """Cancels A's jobs and waits until no call of them is in flight."""
    for job_id in jobs:
        client_a.post(f"/v1/jobs/{job_id}/cancel")
    wait_until(lambda: chunk_counts(stack, tenant_of(stack, jobs[0])).get("running", 0) == 0
               if jobs else True, 120, "A's calls in flight to return")


def tenant_of(stack: Stack, job_id: str) -> str:
    return str(query(stack, "SELECT tenant_id FROM jobs WHERE id = ?", (job_id,))[0][0])
