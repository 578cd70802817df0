"""The service on the reported successor (gpt-6-luna) end to end: price tiers in plans and in
recorded costs (checked against the sandbox's own pricing, ``--gateway-cost``), reasoning tokens
recorded, what a document costs in a prompt, and calibration with merge calls.

The stack and the sandbox read one profiles file that lowers GPT-6 Luna's long-context
threshold from 272,000 to 20,000 prompt tokens, so a 45K-token document shows the tier."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from schemas.strict import check_schema
from service.core.planner import header_tokens
from service.core.profiles import get_profile
from service.core.prompt import fixed_overhead
from tests.support.pdfgen import build_pdf, page_lines, scan_jpeg, text_pdf
from tests.support.stack import (
    Stack,
    create_job,
    job_calls,
    start_stack,
    upload,
    wait_document,
    wait_job,
)

THRESHOLD = 20_000
SCHEMA = {"type": "object", "required": ["title", "lines"], "properties": {
    "title": {"type": "string"}, "lines": {"type": "array", "items": {"type": "string"}}}}
PROFILES = f'[profiles."gpt-6-luna"]\nlong_context_threshold = {THRESHOLD}\n'


@pytest.fixture(scope="module")
def luna(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("luna")
    profiles = tmp / "profiles.toml"
    profiles.write_text(PROFILES)
    s = start_stack(tmp, env_extra={"LONGDOC_MODEL": "gpt-6-luna",
                                    "LONGDOC_MODEL_PROFILES_FILE": str(profiles)},
                    sandbox_args=["--profile", "gpt-6-luna", "--gateway-cost"])
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(luna: Stack) -> Iterator[httpx.Client]:
    with luna.client(luna.create_key("truth")["api_key"]) as c:
        yield c


@pytest.fixture(scope="module")
def profile(luna: Stack) -> Any:
    return get_profile("gpt-6-luna", luna.env["LONGDOC_MODEL_PROFILES_FILE"])


def ready(client: httpx.Client, name: str, data: bytes) -> dict[str, Any]:
    doc = upload(client, name, data=data).json()
    return wait_document(client, doc["id"])


def run(client: httpx.Client, doc_ids: list[str], **options: Any) -> dict[str, Any]:
    return wait_job(client, create_job(client, doc_ids, SCHEMA, **options), 180)



def dry_run(client: httpx.Client, doc_id: str, **options: Any) -> dict[str, Any]:
    response = client.post("/v1/jobs", json={"document_ids": [doc_id], "schema": SCHEMA,
                                             "dry_run": True, **options})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_the_cheapest_plan_stays_under_the_price_threshold_and_costs_less(
        client: httpx.Client, profile: Any) -> None:
    doc = ready(client, "long.pdf", text_pdf(46, lines=60, seed=400))
    assert doc["tokens"] > 2 * THRESHOLD
    fewest, cheapest = dry_run(client, doc["id"]), dry_run(client, doc["id"], plan="cheapest")
    assert fewest["plan"]["calls"] == 1 and cheapest["plan"]["calls"] >= 3
    assert all(c["prompt_tokens"] <= THRESHOLD - 2048 for c in cheapest["plan"]["chunks"])
    assert cheapest["estimated_cost_usd"] < fewest["estimated_cost_usd"] / 1.5
    one, several = run(client, [doc["id"]]), run(client, [doc["id"]], plan="cheapest")
    assert one["status"] == several["status"] == "succeeded", (one, several)
    assert several["plan"]["calls"] == cheapest["plan"]["calls"]
    (big,) = job_calls(client, one["id"])
    assert big["prompt_tokens"] > THRESHOLD
    # The whole call at the long-context rates: 2x input, 1.5x output.
    assert big["cost_usd"] == pytest.approx(
        (big["prompt_tokens"] * 0.20 + big["completion_tokens"] * 0.75) / 1e6, rel=1e-6)
    for call in job_calls(client, one["id"]) + job_calls(client, several["id"]):
        # Priced by the service's profile as the sandbox prices it with its own table.
        assert call["cost_usd"] == pytest.approx(call["gateway_cost_usd"], rel=1e-6), call
        assert call["prompt_tokens"] == call["predicted_prompt_tokens"]
    assert several["cost_usd"] < one["cost_usd"] / 1.5


def test_reasoning_tokens_are_recorded_per_call_and_per_job(client: httpx.Client) -> None:
    doc = ready(client, "short.pdf", text_pdf(2, lines=20, seed=401))
    job = run(client, [doc["id"]])
    assert job["status"] == "succeeded", job
    (call,) = job_calls(client, job["id"])
    assert 0 < call["reasoning_tokens"] < call["completion_tokens"]
    assert job["usage"]["reasoning_tokens"] == call["reasoning_tokens"]
    # Function tools take no reasoning on GPT-6 Luna in Chat Completions: effort "none".
    tools = run(client, [doc["id"]], mode="tools")
    assert tools["status"] == "succeeded", tools
    assert [c["reasoning_tokens"] for c in job_calls(client, tools["id"])] == [0]


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 90, 40)).save(out, "PNG")
    return out.getvalue()


def test_a_documents_tokens_count_its_images_at_the_default_detail(
        client: httpx.Client, profile: Any) -> None:
    photo = ready(client, "photo.png", png(640, 480))
    assert photo["tokens"] == photo["image_tokens"] == profile.image_tokens(640, 480) == 360
    assert photo["text_tokens"] == 0
    scan = ready(client, "scan.pdf", build_pdf([("scan", scan_jpeg(5))]))
    assert scan["text_tokens"] == 0 and scan["tokens"] == scan["image_tokens"] > 1000
    mixed = ready(client, "mixed.pdf", build_pdf([("text", page_lines(1, 30)),
                                                  ("scan", scan_jpeg(6))]))
    assert mixed["text_tokens"] > 0 and mixed["image_tokens"] == scan["image_tokens"]
    assert mixed["tokens"] == mixed["text_tokens"] + mixed["image_tokens"]
    # What the sandbox bills for the scanned page is the document's tokens plus what every
    # call adds (instructions, schema, the page's header).
    job = run(client, [scan["id"]])
    assert job["status"] == "succeeded", job
    (call,) = job_calls(client, job["id"])
    fixed = fixed_overhead(profile, None, check_schema(SCHEMA), "json_schema")
    assert call["prompt_tokens"] == fixed + header_tokens(1, 1, None, True) + scan["tokens"]


def calibration(luna: Stack) -> dict[str, Any]:
    (row,) = [r for r in json.loads(luna.longdoc(["calibration"])) if r["model"] == "sandbox"]
    return row


def test_calibration_counts_answered_extract_and_merge_calls_and_shows_a_disagreement(
        luna: Stack, client: httpx.Client, tmp_path: Path) -> None:
    doc = ready(client, "merge.pdf", text_pdf(12, lines=40, seed=402))
    merged = run(client, [doc["id"]], merge="model", max_tokens_per_call=6000,
                 max_output_tokens=1000)
    assert merged["status"] == "succeeded", merged
    assert [c["purpose"] for c in job_calls(client, merged["id"])].count("merge") == 1
    luna.sandbox(fail_with="insufficient_quota")
    try:
        failed = run(client, [doc["id"]])
    finally:
        luna.sandbox()
    assert failed["error"]["code"] == "model_quota_exhausted"
    (refused,) = job_calls(client, failed["id"])
    assert refused["status"] == "failed" and refused["predicted_prompt_tokens"] > 0

    every = [c for job in client.get("/v1/jobs", params={"limit": 500}).json()["data"]
             for c in job_calls(client, job["id"])]
    answered = [c for c in every if c["status"] == "answered"]
    row = calibration(luna)
    assert row["calls"] == len(answered) < len(every)  # the failed call is left out
    assert row["by_purpose"]["merge"]["calls"] == sum(c["purpose"] == "merge" for c in answered)
    assert row["by_purpose"]["extract"]["calls"] == sum(c["purpose"] == "extract" for c in answered)
    assert row["max_error_tokens"] == row["min_error_tokens"] == 0

    # A sandbox whose chat overhead differs from the service's: the difference shows in the
    # job's calls and in calibration, it does not fail anything.
    wrong = tmp_path / "wrong.toml"
    wrong.write_text(PROFILES + "message_overhead = 4\n")
    luna.sandbox(profiles_file=str(wrong))
    try:
        off = run(client, [doc["id"]])
    finally:
        luna.sandbox()
    assert off["status"] == "succeeded", off
    (call,) = job_calls(client, off["id"])
    assert call["prompt_tokens"] - call["predicted_prompt_tokens"] == 2  # two messages
    row = calibration(luna)
    assert row["max_error_tokens"] == 2 and row["by_purpose"]["extract"]["max_error_tokens"] == 2
    assert row["by_purpose"]["merge"]["max_error_tokens"] == 0
