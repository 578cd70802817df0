"""Planning end to end: the sandbox rejects any request over the window, so a planning mistake
fails these tests."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from schemas.strict import check_schema
from service.core.planner import header_tokens
from service.core.profiles import get_profile
from service.core.prompt import fixed_overhead
from service.store.storage import LocalStorage
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
from workers.parsing import PdfOptions, parse_document

SCHEMA = {"type": "object", "required": ["title", "lines"], "properties": {
    "title": {"type": "string"}, "lines": {"type": "array", "items": {"type": "string"}}}}
RESERVED = 2000


def local_cost(pdf: bytes) -> int:
    """Tokens of the pages as the planner will count them (same parser, same tokenizer)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "doc.pdf"
        path.write_bytes(pdf)
        pages = parse_document(str(path), "application/pdf", LocalStorage(Path(tmp)), PdfOptions(None, 9999))
    return sum(header_tokens(1, i) + p.text_tokens for i, p in enumerate(pages, start=1))


def doc_of_cost(base: list[list[str]], target: int) -> bytes:
    """Adds words to the last page until the document costs exactly ``target`` tokens."""
    for extra in range(0, 400):
        pages = [list(p) for p in base]
        pages[-1][-1] += " word" * extra
        pdf = build_pdf([("text", p) for p in pages])
        cost = local_cost(pdf)
        if cost == target:
            return pdf
        if cost > target:
            break
    raise AssertionError(f"could not build a document of exactly {target} tokens")


@pytest.fixture(scope="module")
def exact() -> dict:
    """A window sized so that document A fills it to the token: prompt + max output = window."""
    base = [page_lines(100 + i, lines=40) for i in range(20)]
    pdf_a = build_pdf([("text", p) for p in base])
    cost_a = local_cost(pdf_a)
    pdf_b = doc_of_cost(base, cost_a + 1)
    overhead = fixed_overhead(get_profile("gpt-4.1-nano"), None, check_schema(SCHEMA), "json_schema")
    return {"a": pdf_a, "b": pdf_b, "cost": cost_a, "window": overhead + cost_a + RESERVED}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory, exact: dict) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("small-window")
    profiles = tmp / "profiles.toml"
    profiles.write_text(f'[profiles."gpt-4.1-nano"]\ncontext_window = {exact["window"]}\n'
                        f"max_output_tokens = {RESERVED}\n")
    s = start_stack(tmp, env_extra={"LONGDOC_MODEL_PROFILES_FILE": str(profiles),
                                    "LONGDOC_SAFETY_MARGIN_TOKENS": "0"})
    yield s
    s.stop()


@pytest.fixture(scope="module")
def key(small: Stack) -> str:
    return small.create_key("planner")["api_key"]


def run(client: httpx.Client, doc_ids: list[str], **options: Any) -> dict[str, Any]:
    return wait_job(client, create_job(client, doc_ids, SCHEMA, **options), 120)



def test_exactly_at_the_budget_is_one_call_and_one_token_more_is_two(small: Stack, key: str, exact) -> None:
    with small.client(key) as client:
        a = upload(client, "a.pdf", data=exact["a"]).json()
        b = upload(client, "b.pdf", data=exact["b"]).json()
        assert wait_document(client, a["id"])["status"] == "ready"
        assert wait_document(client, b["id"])["status"] == "ready"
        before = small.sandbox_stats()
        job_a = run(client, [a["id"]])
        assert job_a["status"] == "succeeded", job_a
        assert job_a["plan"]["calls"] == 1
        # The one call filled the window to the token: prompt + reserved output = window.
        (call,) = job_calls(client, job_a["id"])
        assert call["prompt_tokens"] == call["predicted_prompt_tokens"]
        assert call["prompt_tokens"] + RESERVED == exact["window"]
        job_b = run(client, [b["id"]])
        assert job_b["status"] == "succeeded", job_b
        assert job_b["plan"]["calls"] == 2
        assert all(c["prompt_tokens"] == c["predicted_prompt_tokens"] for c in job_calls(client, job_b["id"]))
        assert small.sandbox_stats()["context_exceeded"] == before["context_exceeded"] == 0


def test_dry_run_matches_the_real_run(small: Stack, key: str) -> None:
    with small.client(key) as client:
        small.kill("cpu")  # hold ingestion back: the document stays "processing"
        doc = upload(client, "many.pdf", data=text_pdf(60, lines=40)).json()
        early = client.post("/v1/jobs", json={"document_ids": [doc["id"]], "schema": SCHEMA,
                                              "dry_run": True})
        assert early.status_code == 409
        assert early.json()["error"]["code"] == "document_not_ready"
        small.start_worker("cpu", name="cpu-2")
        wait_document(client, doc["id"])
        dry = client.post("/v1/jobs", json={"document_ids": [doc["id"]], "schema": SCHEMA,
                                            "dry_run": True})
        assert dry.status_code == 200, dry.text
        plan = dry.json()
        assert plan["plan"]["calls"] >= 2 and plan["estimated_cost_usd"] > 0
        job = run(client, [doc["id"]])
        assert job["status"] == "succeeded"
        assert job["plan"]["chunks"] == plan["plan"]["chunks"]
        made = job_calls(client, job["id"])
        assert len(made) == plan["plan"]["calls"]
        assert sorted(c["prompt_tokens"] for c in made) == sorted(
            c["prompt_tokens"] for c in plan["plan"]["chunks"])
        sizes = [c["prompt_tokens"] for c in plan["plan"]["chunks"]]
        assert (max(sizes) - min(sizes)) / max(sizes) < 0.1


def test_max_cost_refuses_a_job_whose_estimate_is_higher(small: Stack, key: str) -> None:
    with small.client(key) as client:
        doc = upload(client, "cost.pdf", data=text_pdf(5)).json()
        wait_document(client, doc["id"])
        response = client.post("/v1/jobs", json={"document_ids": [doc["id"]], "schema": SCHEMA,
                                                 "max_cost_usd": 0.000001})
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "budget_exceeded"
        assert run(client, [doc["id"]], max_cost_usd=1.0)["status"] == "succeeded"


def test_scanned_and_text_pages_mixed(small: Stack, key: str) -> None:
    pdf = build_pdf([("text", page_lines(1, 30)), ("scan", scan_jpeg(2)), ("text", page_lines(3, 30)),
                     ("scan", scan_jpeg(4)), ("text", page_lines(5, 30))])
    with small.client(key) as client:
        doc = upload(client, "mixed.pdf", data=pdf).json()
        assert wait_document(client, doc["id"])["pages"] == 5
        job = run(client, [doc["id"]])
        assert job["status"] == "succeeded", job
        made = job_calls(client, job["id"])
        assert all(c["prompt_tokens"] == c["predicted_prompt_tokens"] for c in made)
        # Two page images at the patch cap: at least 2 x 1300 patches x 2.46 tokens.
        assert sum(c["prompt_tokens"] for c in made) > 2 * 1300 * 2.46


def test_conflicting_scalars_and_overlapping_arrays_merge(small: Stack, key: str) -> None:
    with small.client(key) as client:
        doc = upload(client, "merge.pdf", data=text_pdf(12, lines=40)).json()
        wait_document(client, doc["id"])
        job = run(client, [doc["id"]], max_tokens_per_call=4800)
        assert job["status"] == "succeeded", job
        assert job["plan"]["calls"] >= 3
        result = client.get(f"/v1/jobs/{job['id']}/result").json()
        conflicts = [w for w in result["warnings"] if w["type"] == "conflict"]
        assert [c["path"] for c in conflicts] == ["/title"]
        assert result["data"]["title"] == conflicts[0]["values"][0] == conflicts[0]["chosen"]
        # One line per page of each chunk, concatenated in page order.
        pages = [int(line.split(",")[1].split()[1].rstrip(":")) for line in result["data"]["lines"]]
        assert pages == sorted(pages) and len(pages) == len(set(pages))


def test_merge_by_model_resolves_conflicts_with_one_more_call(small: Stack, key: str) -> None:
    with small.client(key) as client:
        doc = upload(client, "merge2.pdf", data=text_pdf(12, lines=40, seed=7)).json()
        wait_document(client, doc["id"])
        job = run(client, [doc["id"]], max_tokens_per_call=4800, merge="model")
        assert job["status"] == "succeeded", job
        assert len(job_calls(client, job["id"])) == job["plan"]["calls"] + 1
        warnings = client.get(f"/v1/jobs/{job['id']}/result").json()["warnings"]
        assert warnings and warnings[0]["resolved_by"] == "model"


def test_an_answer_cut_off_keeps_its_items_and_the_job_goes_on(small: Stack, key: str) -> None:
    small.sandbox(truncate_rate=0.4, seed=3)
    try:
        with small.client(key) as client:
            doc = upload(client, "cut.pdf", data=text_pdf(12, lines=40, seed=11)).json()
            wait_document(client, doc["id"])
            job = run(client, [doc["id"]], max_tokens_per_call=4800)
            assert job["status"] == "succeeded", job
            made = job_calls(client, job["id"])
            assert any(c["finish_reason"] == "length" for c in made)
            assert all(c["answer_used"] for c in made)  # a cut answer is paid: it is kept
            assert job["progress"]["chunks_total"] > len([c for c in made if c["finish_reason"] == "length"])
            assert job["progress"]["chunks_done"] == job["progress"]["chunks_total"] == job["plan"]["calls"]
    finally:
        small.sandbox()


def test_tools_mode_gives_the_same_data_as_json_schema(small: Stack, key: str) -> None:
    with small.client(key) as client:
        doc = upload(client, "tools.pdf", data=text_pdf(3)).json()
        wait_document(client, doc["id"])
        plain = run(client, [doc["id"]])
        tools = run(client, [doc["id"]], mode="tools")
        assert tools["status"] == plain["status"] == "succeeded"
        data = [client.get(f"/v1/jobs/{j['id']}/result").json()["data"] for j in (plain, tools)]
        assert data[0] == data[1]


def test_a_three_million_token_document_takes_the_fewest_balanced_calls(stack: Stack, tenant) -> None:
    pdf = text_pdf(4400, lines=42)
    with stack.client(tenant["api_key"]) as client:
        doc = upload(client, "huge.pdf", data=pdf).json()
        ready = wait_document(client, doc["id"], 120)
        assert ready["status"] == "ready" and ready["tokens"] > 2_900_000
        job = run(client, [doc["id"]])
        assert job["status"] == "succeeded", job
        sizes = [c["prompt_tokens"] for c in job["plan"]["chunks"]]
        assert len(sizes) == math.ceil(sum(sizes) / job["plan"]["budget_tokens"])
        assert (max(sizes) - min(sizes)) / max(sizes) < 0.02
        made = job_calls(client, job["id"])
        assert len(made) == len(sizes)
        assert all(c["prompt_tokens"] == c["predicted_prompt_tokens"] for c in made)
        assert stack.sandbox_stats()["context_exceeded"] == 0


def test_a_tpm_limit_below_the_window_shrinks_the_chunks(tmp_path: Path) -> None:
    s = start_stack(tmp_path, env_extra={"LONGDOC_RATE_LIMIT_TIER": "tier1"},
                    sandbox_args=["--tpm", "200000", "--rpm", "500"])
    try:
        with s.client(s.create_key("tier1")["api_key"]) as client:
            doc = upload(client, "tpm.pdf", data=text_pdf(300, lines=42)).json()
            assert wait_document(client, doc["id"], 60)["tokens"] > 200_000
            job = run(client, [doc["id"]])
            assert job["status"] == "succeeded", job
            # tier 1: 200k TPM; each request is charged max(prompt, max_tokens).
            assert job["plan"]["budget_tokens"] < 200_000
            assert job["plan"]["calls"] == math.ceil(
                sum(c["prompt_tokens"] for c in job["plan"]["chunks"]) / job["plan"]["budget_tokens"])
            for call in job_calls(client, job["id"]):
                assert call["prompt_tokens"] <= 200_000
            assert s.sandbox_stats()["context_exceeded"] == 0
    finally:
        s.stop()


def test_pages_as_images_sends_every_page_as_an_image(small: Stack, key: str) -> None:
    with small.client(key) as client:
        doc = upload(client, "as-images.pdf", data=text_pdf(3, lines=20)).json()
        wait_document(client, doc["id"])
        as_text = run(client, [doc["id"]])
        as_images = run(client, [doc["id"]], pages_as_images=True)
        assert as_images["status"] == "succeeded", as_images
        made = job_calls(client, as_images["id"])
        assert all(c["prompt_tokens"] == c["predicted_prompt_tokens"] for c in made)
        # Three page renders at the patch cap cost far more than three pages of text.
        assert as_images["usage"]["prompt_tokens"] > 3 * 1300 * 2.46
        assert as_images["usage"]["prompt_tokens"] > 2 * as_text["usage"]["prompt_tokens"]


def test_a_request_the_model_finds_too_large_is_split_not_failed(tmp_path: Path) -> None:
    # The sandbox impersonates a model with a smaller window than the service believes in.
    profiles = tmp_path / "profiles.toml"
    profiles.write_text('[profiles."narrow"]\ncontext_window = 9000\nmax_output_tokens = 2000\n'
                        'tokenizer = "o200k_base"\nimage_method = "patch"\nimage_multiplier = 2.46\n'
                        'price_input = 0.1\nprice_cached_input = 0.025\nprice_output = 0.4\n')
    s = start_stack(tmp_path, env_extra={"LONGDOC_MODEL_PROFILES_FILE": str(profiles),
                                        "LONGDOC_RESERVED_OUTPUT_TOKENS": "2000"},
                    sandbox_args=["--profile", "narrow"])
    try:
        with s.client(s.create_key("narrow")["api_key"]) as client:
            doc = upload(client, "n.pdf", data=text_pdf(16, lines=40)).json()
            wait_document(client, doc["id"])
            job = run(client, [doc["id"]])
            assert job["status"] == "succeeded", job
            assert s.sandbox_stats()["context_exceeded"] >= 1
            assert job["plan"]["calls"] >= 2, "re-planned into smaller chunks"
            assert job["progress"]["chunks_done"] == job["progress"]["chunks_total"]
    finally:
        s.stop()


def test_documents_that_fit_together_go_in_one_call(small: Stack, key: str) -> None:
    with small.client(key) as client:
        docs = [upload(client, f"p{i}.pdf", data=text_pdf(2, lines=20, seed=40 + i)).json()["id"]
                for i in range(3)]
        for doc_id in docs:
            wait_document(client, doc_id)
        job = run(client, docs)
        assert job["status"] == "succeeded"
        assert job["plan"]["calls"] == 1
        assert job["plan"]["chunks"][0]["documents"] == docs
        lines = client.get(f"/v1/jobs/{job['id']}/result").json()["data"]["lines"]
        assert [line.split(",")[0] for line in lines] == ["Document 1", "Document 1", "Document 2",
                                                          "Document 2", "Document 3"]


def test_the_shared_prefix_is_cached_across_the_calls_of_a_job(small: Stack, key: str) -> None:
    instructions = "Follow the house style. " * 200  # > 1024 tokens, shared by every call
    with small.client(key) as client:
        doc = upload(client, "cache.pdf", data=text_pdf(12, lines=40, seed=70)).json()
        wait_document(client, doc["id"])
        job = run(client, [doc["id"]], instructions=instructions, max_tokens_per_call=6000)
        assert job["status"] == "succeeded" and job["plan"]["calls"] >= 3
        made = job_calls(client, job["id"])
        assert sum(1 for c in made if c["cached_tokens"] >= 1024) >= len(made) - 1
        cached = job["usage"]["cached_tokens"]
        expected = (job["usage"]["prompt_tokens"] - cached) * 0.10 + cached * 0.025 + \
            job["usage"]["completion_tokens"] * 0.40
        assert job["cost_usd"] == pytest.approx(expected / 1e6, rel=1e-6)


def test_low_image_detail_costs_less_for_a_large_image(small: Stack, key: str) -> None:
    pdf = build_pdf([("scan", scan_jpeg(9))])
    with small.client(key) as client:
        doc = upload(client, "scan.pdf", data=pdf).json()
        wait_document(client, doc["id"])
        auto = run(client, [doc["id"]])
        low = run(client, [doc["id"]], image_detail="low")
        assert low["status"] == auto["status"] == "succeeded"
        assert low["usage"]["prompt_tokens"] < auto["usage"]["prompt_tokens"] - 2000
        assert all(c["prompt_tokens"] == c["predicted_prompt_tokens"] for c in job_calls(client, low["id"]))


def test_calibration_reports_the_count_error_per_model(small: Stack, key: str) -> None:
    import json

    with small.client(key) as client:
        doc = upload(client, "cal.pdf", data=text_pdf(2)).json()
        wait_document(client, doc["id"])
        assert run(client, [doc["id"]])["status"] == "succeeded"
    (row,) = [r for r in json.loads(small.longdoc(["calibration"])) if r["model"] == "sandbox"]
    assert row["calls"] >= 1
    assert row["mean_error_tokens"] == row["min_error_tokens"] == row["max_error_tokens"] == 0
