"""Complete and grounded answers, end to end: a 100-page ledger of 5,000 numbered rows, read by a
sandbox that answers from an oracle of every row and cuts answers at the 32,768-token output cap
mid-JSON, as GPT-4.1 nano does."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from service.core.sizing import lower_bound_calls, usable_output
from service.core.tokens import count_text
from tests.support.ledger import SCHEMA, Ledger, make_ledger
from tests.support.stack import Stack, start_stack, upload, wait_document, wait_job

CAP = 32_768  # gpt-4.1-nano's output cap, as the sandbox plays it


@pytest.fixture(scope="module")
def ledger() -> Ledger:
    return make_ledger(pages=100, rows_per_page=50)


@pytest.fixture(scope="module")
def ledger_stack(tmp_path_factory: pytest.TempPathFactory, ledger: Ledger) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("ledger")
    s = start_stack(tmp, sandbox_args=["--oracle", ledger.oracle(tmp / "oracle.jsonl"),
                                       "--seed", "12"])
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(ledger_stack: Stack) -> Iterator[httpx.Client]:
    with ledger_stack.client(ledger_stack.create_key("ledger")["api_key"]) as c:
        yield c


@pytest.fixture(scope="module")
def document(client: httpx.Client, ledger: Ledger) -> dict[str, Any]:
    doc = upload(client, "ledger.pdf", data=ledger.pdf).json()
    ready = wait_document(client, doc["id"], 120)
    assert ready["status"] == "ready" and ready["pages"] == 100
    return ready


def run(client: httpx.Client, document: dict[str, Any], **options: Any) -> dict[str, Any]:
    response = client.post("/v1/jobs", json={"document_ids": [document["id"]], "schema": SCHEMA,
                                             **options})
    assert response.status_code == 202, response.text
    job = wait_job(client, response.json()["id"], 120)
    assert job["status"] == "succeeded", job
    return job


def calls_of(client: httpx.Client, job: dict[str, Any]) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = client.get(f"/v1/jobs/{job['id']}/calls").json()["calls"]
    return calls


def result_of(client: httpx.Client, job: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = client.get(f"/v1/jobs/{job['id']}/result").json()
    return result


def duplicates(result: dict[str, Any]) -> int:
    return sum(1 for w in result["warnings"] if w["type"] == "duplicate")


def test_a_5000_row_ledger_comes_back_whole_within_two_calls_of_the_lower_bound(
        client: httpx.Client, document: dict[str, Any], ledger: Ledger) -> None:
    job = run(client, document)
    result = result_of(client, job)
    assert result["data"]["rows"] == [r.value for r in ledger.rows]  # all, once, in order
    calls = calls_of(client, job)
    assert all(c["status"] == "answered" for c in calls)
    # The answer is ~5x the output cap: the first call is cut there.
    assert calls[0]["finish_reason"] == "length" and calls[0]["completion_tokens"] == CAP
    answer_tokens = count_text(json.dumps(result["data"], separators=(",", ":")))
    assert answer_tokens > 4 * CAP
    bound = lower_bound_calls(document["tokens"], job["plan"]["budget_tokens"], answer_tokens,
                              usable_output(CAP))
    assert len(calls) <= bound + 2, (len(calls), bound)
    # No answer thrown away: every call's complete items went into the result, or were read
    # again where two calls overlap (and then reported as duplicates).
    assert all(c["answer_used"] for c in calls)
    assert all(c["answer_items"] > 0 for c in calls)
    assert sum(c["answer_items"] for c in calls) == 5000 + duplicates(result)
    assert job["cost_usd"] == pytest.approx(sum(c["cost_usd"] for c in calls), abs=1e-6)
    assert job["cost_usd"] > 0 and job["usage"]["completion_tokens"] >= answer_tokens
    assert job["plan"]["answer"]["ratio_learned"] is True
    assert job["plan"]["calls"] == job["progress"]["chunks_total"] == len(calls)


def test_a_page_range_returns_exactly_the_rows_of_its_pages(
        client: httpx.Client, document: dict[str, Any], ledger: Ledger) -> None:
    job = run(client, document, pages={document["id"]: "10-20"})
    rows = result_of(client, job)["data"]["rows"]
    assert rows == [r.value for r in ledger.rows_on(range(10, 21))]
    assert job["plan"]["chunks"][0]["pages"] == [10, 20]
    # Only those pages were sent (and paid for).
    assert job["usage"]["prompt_tokens"] < document["tokens"] * 12 / 100


@pytest.mark.parametrize(("spec", "reason"), [("20-10", "runs backwards"),
                                              ("99-101", "has 100 page(s)"),
                                              ("1,two", "is not a page or a range")])
def test_a_page_range_the_document_cannot_satisfy_is_refused_with_the_reason(
        client: httpx.Client, document: dict[str, Any], spec: str, reason: str) -> None:
    response = client.post("/v1/jobs", json={"document_ids": [document["id"]], "schema": SCHEMA,
                                             "pages": {document["id"]: spec}})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_pages"
    assert reason in response.json()["error"]["message"]
    other = "doc_" + "0" * 24
    response = client.post("/v1/jobs", json={"document_ids": [document["id"]], "schema": SCHEMA,
                                             "pages": {other: "1"}})
    assert response.status_code == 422 and "not in document_ids" in response.json()["error"]["message"]


CITED_PAGES = "1-8"


def cited_run(client: httpx.Client, document: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    job = run(client, document, pages={document["id"]: CITED_PAGES}, citations=True)
    result = result_of(client, job)
    return result, calls_of(client, job)


def test_every_row_cites_the_page_it_is_printed_on_and_every_quote_is_verified(
        client: httpx.Client, ledger_stack: Stack, document: dict[str, Any],
        ledger: Ledger) -> None:
    ledger_stack.sandbox(fabricate_rate=0.0)
    result, calls = cited_run(client, document)
    expected = ledger.rows_on(range(1, 9))
    assert result["data"]["rows"] == [r.value for r in expected]
    sources = result["sources"]
    for i, row in enumerate(expected):
        for key in ("number", "date", "description", "amount"):
            (source,) = sources[f"/rows/{i}/{key}"]
            assert source == {"document": document["id"], "page": row.page,
                              "quote": row.number, "verified": True}
    assert [w for w in result["warnings"] if w["type"] != "duplicate"] == []
    # Sources make the answer ~4x longer than the rows alone: it took several calls, none lost.
    assert len(calls) > 1 and all(c["answer_used"] for c in calls)


def test_fabricated_citations_and_only_those_are_unverified_and_warned(
        client: httpx.Client, ledger_stack: Stack, document: dict[str, Any]) -> None:
    ledger_stack.sandbox(fabricate_rate=0.1)
    try:
        result, _ = cited_run(client, document)
        fabricated = ledger_stack.sandbox_stats()["fabricated"]
    finally:
        ledger_stack.sandbox()
    index = {row["number"]: i for i, row in enumerate(result["data"]["rows"])}
    made_up = {f"/rows/{index[f['match']]}/{f['entry_path'].rsplit('/', 1)[1]}" for f in fabricated}
    assert 0.05 < len(made_up) / (4 * len(index)) < 0.15
    unverified = {pointer for pointer, given in result["sources"].items()
                  if any(s["verified"] is False for s in given)}
    warned = {w["path"] for w in result["warnings"] if w["type"] == "unverified_source"}
    assert unverified == warned == made_up
    for pointer, given in result["sources"].items():
        assert all(s["verified"] is (pointer not in made_up) for s in given)


def test_a_job_that_may_not_fit_learns_from_its_first_call_before_it_fans_out(
        client: httpx.Client, document: dict[str, Any], ledger: Ledger) -> None:
    # Chunks of ~20 pages by the input budget; the schema's bound says their answers may not
    # fit, so the first goes alone and the others wait for what its answer shows.
    response = client.post("/v1/jobs", json={"document_ids": [document["id"]], "schema": SCHEMA,
                                             "max_tokens_per_call": 60_000})
    assert response.status_code == 202
    planned = response.json()["plan"]
    assert planned["calls"] == 5 and planned["answer"]["first_call_alone"] is True
    job = wait_job(client, response.json()["id"], 120)
    assert job["status"] == "succeeded", job
    assert result_of(client, job)["data"]["rows"] == [r.value for r in ledger.rows]
    calls = calls_of(client, job)
    assert all(c["finish_reason"] == "stop" for c in calls[1:])
    assert len(calls) <= job["plan"]["answer"]["lower_bound_calls"] + 1


@pytest.mark.parametrize("mode", ["json_schema", "tools"])
def test_a_small_schema_gets_sources_without_asking_and_counts_stay_exact(
        client: httpx.Client, document: dict[str, Any], mode: str) -> None:
    schema = {"type": "object", "properties": {"first": {"type": "string"}}}
    response = client.post("/v1/jobs", json={"document_ids": [document["id"]], "schema": schema,
                                             "pages": {document["id"]: "3"}, "mode": mode})
    job = wait_job(client, response.json()["id"], 60)
    assert job["status"] == "succeeded", job
    result = result_of(client, job)
    # The sandbox has no oracle entry for this field: a value without a source is named.
    assert result["sources"] == {}
    assert [w["type"] for w in result["warnings"]] == ["no_source"]
    # The {data, sources} wrapper and the citation instructions are counted as sent.
    (call,) = calls_of(client, job)
    assert call["prompt_tokens"] == call["predicted_prompt_tokens"]
