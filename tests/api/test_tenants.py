"""Tenants own their data and their limits: a delete leaves no row and no file behind (read
straight from the database and the storage directory), quotas refuse with 429 and recover when
their window has passed, keys and webhook secrets rotate with a grace period.

Deletes and the concurrency limit run on SQLite and PostgreSQL; the rest on SQLite.
"""

from __future__ import annotations

import argparse
import json
import secrets
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from service.cli import parser as cli_parser
from tests.support.pdfgen import build_pdf, text_pdf
from tests.support.records import execute, places, query, sqlite_file_holds, stored
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
          "properties": {"title": {"type": "string"}, "lines": {"type": "array",
                                                               "items": {"type": "string"}}}}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def db_stack(request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if request.param == "sqlite":
        yield request.getfixturevalue("stack")
        return
    s = start_stack(tmp_path_factory.mktemp("tenants-pg"), database="postgresql")
    yield s
    s.stop()


@pytest.fixture
def sandbox(db_stack: Stack) -> Iterator[Stack]:
    """The stack, its sandbox back to answering at once after the test."""
    yield db_stack
    db_stack.sandbox()


def new_tenant(stack: Stack, prefix: str) -> dict[str, str]:
    name = f"{prefix}-{secrets.token_hex(3)}"
    created = json.loads(stack.longdoc(["tenants", "create", "--tenant", name]))
    tenant_id = query(stack, "SELECT id FROM tenants WHERE name = ?", (name,))[0][0]
    return {**created, "id": tenant_id}


def ready_document(client: httpx.Client, pdf: bytes, name: str = "doc.pdf") -> dict[str, Any]:
    created = upload(client, name, data=pdf)
    assert created.status_code == 201, created.text
    doc = wait_document(client, created.json()["id"])
    assert doc["status"] == "ready", doc
    return doc


def submit(client: httpx.Client, doc_ids: list[str], **extra: Any) -> httpx.Response:
    return client.post("/v1/jobs", json={"document_ids": doc_ids, "schema": SCHEMA, **extra})


def started(client: httpx.Client, doc_ids: list[str], **extra: Any) -> str:
    response = submit(client, doc_ids, **extra)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


# Deletes ----------------------------------------------------------------------------------------

def test_a_deleted_document_is_gone_from_database_and_storage_and_a_shared_file_survives(
        db_stack: Stack) -> None:
    tenant = new_tenant(db_stack, "deleter")
    pdf = text_pdf(3, lines=20, seed=int(secrets.token_hex(3), 16))
    with db_stack.client(tenant["api_key"]) as client:
        first = ready_document(client, pdf, "contract.pdf")
        second = ready_document(client, pdf, "copy-of-contract.pdf")  # identical bytes
        assert first["sha256"] == second["sha256"]
        files = {first["sha256"], *(key for (key,) in query(
            db_stack, "SELECT key FROM document_blobs WHERE document_id = ?", (first["id"],)))}
        assert len(files) >= 2 and all(stored(db_stack, key) for key in files)
        job_id = started(client, [first["id"]])
        assert wait_job(client, job_id)["status"] == "succeeded"

        assert client.delete(f"/v1/documents/{first['id']}").status_code == 204
        assert client.get(f"/v1/documents/{first['id']}").status_code == 404
        assert client.delete(f"/v1/documents/{first['id']}").status_code == 404
        # Only the ended job's own account of what it read still names the document.
        assert set(places(db_stack, first["id"])) <= {"jobs", "job_events"}
        assert places(db_stack, "contract.pdf") == {"documents": 1}  # the copy's own name
        assert all(stored(db_stack, key) for key in files), "the copy still needs its files"
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "succeeded" and job["document_ids"] == [first["id"]]
        assert client.get(f"/v1/jobs/{job_id}/result").status_code == 200

        assert client.delete(f"/v1/documents/{second['id']}").status_code == 204
        assert not any(stored(db_stack, key) for key in files)
        assert places(db_stack, first["sha256"]) == {}
        assert places(db_stack, second["id"]) == {}
        assert places(db_stack, "contract.pdf") == {}


def test_a_deleted_job_leaves_no_row_and_no_byte_behind(db_stack: Stack) -> None:
    tenant = new_tenant(db_stack, "forgetful")
    marker = f"quokka{secrets.token_hex(5)}"
    receiver = WebhookReceiver(tenant["webhook_secret"])
    try:
        with db_stack.client(tenant["api_key"]) as client:
            doc = ready_document(client, build_pdf([("text", [f"{marker} agreement"] * 3)]))
            response = client.post("/v1/jobs", headers={"Idempotency-Key": marker}, json={
                "document_ids": [doc["id"]], "schema": SCHEMA, "webhook_url": receiver.url})
            assert response.status_code == 202, response.text
            job_id = response.json()["id"]
            assert wait_job(client, job_id)["status"] == "succeeded"
            wait_until(lambda: receiver.received, 30, "the job.succeeded webhook")
            wait_until(lambda: client.get(f"/v1/jobs/{job_id}/webhooks").json()["deliveries"][0]
                       ["status"] == "delivered", 30, "the delivery to be recorded")
            assert marker in json.dumps(client.get(f"/v1/jobs/{job_id}/result").json())
            kept = places(db_stack, job_id)
            assert {"jobs", "chunks", "model_calls", "results", "job_events", "job_documents",
                    "webhook_deliveries", "idempotency_keys"} <= set(kept), kept
            usage = client.get(f"/v1/jobs/{job_id}").json()["usage"]
            if db_stack.pg is None:
                assert sqlite_file_holds(db_stack, marker.encode())

            # The purge puts an ended job in the quota ledger within seconds; deleting it
            # afterwards must not put it there again (it was counted twice).
            wait_until(lambda: query(db_stack, "SELECT charged_at FROM jobs WHERE id = ?",
                                     (job_id,))[0][0], 30, "the purge to charge the job")
            assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
            for path in ("", "/result", "/calls", "/webhooks", "/events"):
                assert client.get(f"/v1/jobs/{job_id}{path}").status_code == 404, path
            assert client.delete(f"/v1/jobs/{job_id}").status_code == 404
            assert places(db_stack, job_id) == {}
            assert places(db_stack, marker) == {}
            assert query(db_stack, "SELECT count(*) FROM webhook_attempts")[0][0] == query(
                db_stack, "SELECT count(*) FROM webhook_attempts a JOIN webhook_deliveries d "
                          "ON d.id = a.delivery_id")[0][0], "no attempt outlives its delivery"
            if db_stack.pg is None:
                assert not sqlite_file_holds(db_stack, marker.encode())
            # The document was not the job's to delete; the quota keeps what the job used.
            assert client.get(f"/v1/documents/{doc['id']}").status_code == 200
            tokens = client.get("/v1/usage").json()["tokens_per_day"]["used"]
            assert tokens == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    finally:
        receiver.close()


def test_a_read_document_is_409_and_deleting_its_running_job_cancels_then_deletes_it(
        sandbox: Stack) -> None:
    stack = sandbox
    tenant = new_tenant(stack, "impatient")
    stack.sandbox(ttft_s=4)
    with stack.client(tenant["api_key"]) as client:
        doc = ready_document(client, text_pdf(2, lines=20))
        job_id = started(client, [doc["id"]])
        wait_until(lambda: stack.sandbox_stats()["in_flight"] >= 1, 30, "the job's call in flight")

        refused = client.delete(f"/v1/documents/{doc['id']}")
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"]["code"] == "document_in_use"
        assert job_id in refused.json()["error"]["message"]

        deleting = client.delete(f"/v1/jobs/{job_id}")
        assert deleting.status_code == 202, deleting.text
        assert deleting.json()["status"] == "canceled" and deleting.json()["expires_at"]
        assert client.delete(f"/v1/documents/{doc['id']}").status_code == 204  # no job reads it

        wait_until(lambda: client.get(f"/v1/jobs/{job_id}").status_code == 404, 60,
                   "the purge to delete the job once its call has returned")
        assert places(stack, job_id) == {}
        assert places(stack, doc["id"]) == {}
        assert stack.sandbox_stats()["completed"] == 1
        used = client.get("/v1/usage").json()["tokens_per_day"]["used"]
        assert used > 0, "the call that was in flight is counted"


def test_another_tenants_document_and_job_are_404_to_delete_and_stay(stack: Stack) -> None:
    owner, stranger = new_tenant(stack, "owner"), new_tenant(stack, "stranger")
    with stack.client(owner["api_key"]) as mine, stack.client(stranger["api_key"]) as theirs:
        doc = ready_document(mine, text_pdf(1, lines=10))
        job_id = started(mine, [doc["id"]])
        assert wait_job(mine, job_id)["status"] == "succeeded"
        for path in (f"/v1/documents/{doc['id']}", f"/v1/jobs/{job_id}"):
            refused = theirs.delete(path)
            assert refused.status_code == 404 and refused.json()["error"]["code"] == "not_found"
            assert mine.get(path).status_code == 200
        for path in ("/v1/documents/doc_" + "z" * 500, "/v1/jobs/job_" + "0" * 24):
            assert theirs.delete(path).status_code == 404


def test_a_job_deleted_while_a_client_long_polls_it_is_404_to_that_client(stack: Stack) -> None:
    tenant = new_tenant(stack, "waiter")
    with stack.client(tenant["api_key"]) as client:
        stack.kill("cpu")  # the document stays processing: its job stays queued, nothing in flight
        try:
            doc = upload(client, "later.pdf", data=text_pdf(1, lines=10, seed=5)).json()
            job_id = started(client, [doc["id"]])
            answers: list[httpx.Response] = []
            waiting = threading.Thread(target=lambda: answers.append(
                client.get(f"/v1/jobs/{job_id}", params={"wait": 3})))
            waiting.start()
            assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
            waiting.join(timeout=30)
            assert answers[0].status_code == 404, answers[0].text
            assert answers[0].json()["error"]["code"] == "not_found"
        finally:
            stack.start_worker("cpu", name=f"cpu-{secrets.token_hex(2)}")
        assert wait_document(client, doc["id"])["status"] == "ready"


# Quotas -----------------------------------------------------------------------------------------

def test_jobs_created_at_once_cannot_pass_a_concurrency_limit_of_one(sandbox: Stack) -> None:
    stack = sandbox
    tenant = new_tenant(stack, "bursty")
    stack.longdoc(["tenants", "set-limits", "--tenant", tenant["tenant"],
                   "--max-concurrent-jobs", "1"])
    stack.sandbox(ttft_s=3)
    with stack.client(tenant["api_key"]) as client:
        doc = ready_document(client, text_pdf(1, lines=10))
    barrier = threading.Barrier(6)
    answers: list[httpx.Response] = []

    def create() -> None:
        with stack.client(tenant["api_key"]) as own:
            barrier.wait()
            answers.append(submit(own, [doc["id"]]))

    threads = [threading.Thread(target=create) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(a.status_code for a in answers) == [202] + [429] * 5, [a.text for a in answers]
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.json()["error"]["code"] == "quota_exceeded"
    assert "max_concurrent_jobs is 1" in refused.json()["error"]["message"]
    assert int(refused.headers["retry-after"]) >= 1
    with stack.client(tenant["api_key"]) as client:
        use = client.get("/v1/usage").json()["concurrent_jobs"]
        assert use == {"used": 1, "limit": 1, "window": "now", "resets_at": None}
        accepted = next(a for a in answers if a.status_code == 202).json()["id"]
        assert client.post(f"/v1/jobs/{accepted}/cancel").json()["status"] == "canceled"
        again = started(client, [doc["id"]])  # the slot is free once the job has ended
        client.post(f"/v1/jobs/{again}/cancel")


def test_pages_per_day_refuses_with_429_and_recovers_when_the_day_has_passed(stack: Stack) -> None:
    tenant = new_tenant(stack, "pager")
    stack.longdoc(["tenants", "set-limits", "--tenant", tenant["tenant"],
                   "--max-pages-per-day", "6"])
    with stack.client(tenant["api_key"]) as client:
        four = ready_document(client, text_pdf(4, lines=10))
        two = ready_document(client, text_pdf(2, lines=10, seed=7))
        first = started(client, [four["id"]])
        assert wait_job(client, first)["status"] == "succeeded"

        refused = submit(client, [four["id"]])
        assert refused.status_code == 429, refused.text
        error = refused.json()["error"]
        assert error["code"] == "quota_exceeded"
        assert "max_pages_per_day is 6 (4 used today, this job reads 4)" in error["message"]
        assert 1 <= int(refused.headers["retry-after"]) <= 86400
        assert started(client, [two["id"]])  # 4 + 2 fits exactly
        pages = client.get("/v1/usage").json()["pages_per_day"]
        assert pages["used"] == 6 and pages["limit"] == 6 and pages["window"] == "utc_day"
        assert submit(client, [two["id"]]).status_code == 429

        # The next UTC day: the ledger's rows are moved a day back, as time would.
        wait_until(lambda: query(stack, "SELECT count(*) FROM jobs WHERE tenant_id = ? AND "
                                        "charged_at IS NULL", (tenant["id"],))[0][0] == 0,
                   60, "both jobs to be in the tenant's ledger")
        execute(stack, "UPDATE tenant_usage SET day = ? WHERE tenant_id = ?",
                (datetime.now(UTC).date() - timedelta(days=1), tenant["id"]))
        assert client.get("/v1/usage").json()["pages_per_day"]["used"] == 0
        assert wait_job(client, started(client, [four["id"]]))["status"] == "succeeded"


def test_token_and_dollar_limits_refuse_with_the_limit_in_the_message(stack: Stack) -> None:
    tenant = new_tenant(stack, "thrifty")
    with stack.client(tenant["api_key"]) as client:
        doc = ready_document(client, text_pdf(2, lines=20))
        stack.longdoc(["tenants", "set-limits", "--tenant", tenant["tenant"],
                       "--max-usd-per-month", "0.000001"])
        refused = submit(client, [doc["id"]])
        assert refused.status_code == 429
        assert "max_usd_per_month is 1e-06" in refused.json()["error"]["message"]
        assert 1 <= int(refused.headers["retry-after"]) <= 31 * 86400

        stack.longdoc(["tenants", "set-limits", "--tenant", tenant["tenant"],
                       "--max-usd-per-month", "none", "--max-tokens-per-day", "50"])
        refused = submit(client, [doc["id"]])
        assert refused.status_code == 429
        assert "max_tokens_per_day is 50" in refused.json()["error"]["message"]
        # A job planned by a worker (pages as images) is checked when it is planned: it fails.
        queued = started(client, [doc["id"]], pages_as_images=True)
        ended = wait_job(client, queued)
        assert ended["status"] == "failed" and ended["error"]["code"] == "quota_exceeded"
        assert "max_tokens_per_day is 50" in ended["error"]["message"]
        usage = client.get("/v1/usage").json()
        assert usage["tokens_per_day"]["limit"] == 50 and usage["usd_per_month"]["limit"] is None


def test_usage_needs_a_key_and_shows_no_limits_for_a_new_tenant(stack: Stack) -> None:
    tenant = new_tenant(stack, "fresh")
    with stack.client() as anonymous:
        assert anonymous.get("/v1/usage").status_code == 401
    with stack.client(tenant["api_key"]) as client:
        usage = client.get("/v1/usage").json()
    assert usage["tenant"] == tenant["tenant"]
    for name in ("concurrent_jobs", "pages_per_day", "tokens_per_day", "usd_per_month"):
        assert usage[name]["used"] == 0 and usage[name]["limit"] is None


# Keys and secrets -------------------------------------------------------------------------------

def test_a_rotated_key_keeps_working_through_its_grace_period_then_stops(stack: Stack) -> None:
    tenant = new_tenant(stack, "rotor")

    def works(key: str) -> bool:
        with stack.client(key) as client:
            return client.get("/v1/usage").status_code == 200

    name = tenant["tenant"]
    second = json.loads(stack.longdoc(["tenants", "rotate-key", "--tenant", name]))
    assert works(tenant["api_key"]) and works(second["api_key"])
    third = json.loads(stack.longdoc(["tenants", "rotate-key", "--tenant", name,
                                      "--grace-hours", "0"]))
    assert not works(tenant["api_key"]) and not works(second["api_key"])
    assert works(third["api_key"])
    listed = stack.longdoc(["tenants", "list"])
    mine = next(t for t in json.loads(listed) if t["tenant"] == name)
    assert [k["prefix"] for k in mine["api_keys"]] == [third["api_key"][:10]]
    assert third["api_key"] not in listed and tenant["webhook_secret"] not in listed
    assert query(stack, "SELECT count(*) FROM api_keys WHERE key_hash = ?",
                 (third["api_key"],))[0][0] == 0, "keys are stored hashed"


def test_webhooks_are_signed_with_both_secrets_during_a_rotation(stack: Stack) -> None:
    tenant = new_tenant(stack, "signer")
    name, old = tenant["tenant"], tenant["webhook_secret"]
    new = json.loads(stack.longdoc(["tenants", "rotate-webhook-secret", "--tenant", name]))
    receiver = WebhookReceiver(new["webhook_secret"])
    try:
        with stack.client(tenant["api_key"]) as client:
            doc = ready_document(client, text_pdf(1, lines=10))
            started(client, [doc["id"]], webhook_url=receiver.url)
            delivered = wait_until(lambda: receiver.received, 30, "a webhook")[0]
            assert delivered.verified is not None
            assert len(delivered.headers["webhook-signature"].split(" ")) == 2
            Webhook(old).verify(delivered.body, delivered.headers)  # the old secret still verifies

            newest = json.loads(stack.longdoc(["tenants", "rotate-webhook-secret", "--tenant",
                                               name, "--grace-hours", "0"]))
            receiver.secret = newest["webhook_secret"]
            started(client, [doc["id"]], webhook_url=receiver.url)
            last = wait_until(lambda: receiver.received[1:], 30, "a second webhook")[0]
            assert last.verified is not None
            with pytest.raises(WebhookVerificationError):
                Webhook(new["webhook_secret"]).verify(last.body, last.headers)
    finally:
        receiver.close()


def test_every_tenants_subcommand_and_flag_says_what_it_does() -> None:
    root = cli_parser()
    tenants = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction)
                   ).choices["tenants"]
    commands = next(a for a in tenants._actions if isinstance(a, argparse._SubParsersAction))
    assert set(commands.choices) == {"list", "create", "set-limits", "rotate-key",
                                     "rotate-webhook-secret"}
    described = {a.dest: a.help for a in commands._choices_actions}
    assert all(described.get(name) for name in commands.choices), described
    for name, sub in commands.choices.items():
        for action in sub._actions:
            assert action.help, f"longdoc tenants {name} {action.option_strings} has no help"
