"""A job's estimated cost is priced call by call, and ``plan: "cheapest"`` weighs price tiers."""

from __future__ import annotations

import math
from typing import BinaryIO

import pytest

from service.core.jobs import DocumentPages, JobSpec, estimate_cost, expected_call_output, make_plan
from service.core.planner import Plan, PlannedChunk
from service.core.profiles import get_profile
from service.core.settings import Settings

SCHEMA = {"type": "object", "required": ["title"], "properties": {"title": {"type": "string"}}}
LUNA = get_profile("gpt-6-luna")
NANO = get_profile("gpt-4.1-nano")


class NoPages:
    """Page artifacts are read only to split a page larger than a call: never here."""

    def put_bytes(self, data: bytes) -> str:
        raise AssertionError("nothing is stored while planning")

    def open(self, key: str) -> BinaryIO:
        raise AssertionError("no page of these documents needs its text")


def settings() -> Settings:
    return Settings(safety_margin_tokens=2048, reserved_output_tokens=0, rate_limit_tier="",
                    rate_limit_rpm=0, rate_limit_tpm=0)


def text_document(pages: int, tokens_per_page: int) -> DocumentPages:
    return DocumentPages("application/pdf", [["text", tokens_per_page, 612, 792, 0]] * pages,
                         "pages-key")


def job(plan: str | None = None) -> JobSpec:
    return JobSpec(schema=SCHEMA, instructions=None, options={"plan": plan} if plan else {})


def test_each_call_is_priced_by_its_own_prompt() -> None:
    one = Plan(budget=900_000, overhead=500, chunks=[PlannedChunk([], 400_000)])
    two = Plan(budget=900_000, overhead=500, chunks=[PlannedChunk([], 200_000)] * 2)
    out = expected_call_output(job(), LUNA, settings())
    assert estimate_cost(job(), one, LUNA, settings()) == pytest.approx(
        LUNA.cost_usd(400_000, 0, out))
    assert estimate_cost(job(), two, LUNA, settings()) == pytest.approx(
        2 * LUNA.cost_usd(200_000, 0, out))
    # The same 400K tokens: over the threshold in one call, 2x input; under it in two.
    assert estimate_cost(job(), one, LUNA, settings()) > 1.8 * estimate_cost(job(), two, LUNA,
                                                                             settings())


def test_a_reasoning_model_expects_reasoning_tokens_in_each_answer() -> None:
    answer = expected_call_output(job(), NANO, settings())
    assert expected_call_output(job(), LUNA, settings()) == answer + math.ceil(answer * 0.5)


def test_the_cheapest_plan_keeps_every_call_under_the_price_threshold() -> None:
    doc = text_document(pages=100, tokens_per_page=5_000)  # 500K tokens of pages
    fewest = make_plan(job(), [doc], LUNA, settings(), NoPages())
    cheapest = make_plan(job("cheapest"), [doc], LUNA, settings(), NoPages())
    assert len(fewest.chunks) == 1 and fewest.chunks[0].prompt_tokens > 500_000
    assert len(cheapest.chunks) == 2
    assert all(c.prompt_tokens <= 272_000 - 2048 for c in cheapest.chunks)
    assert estimate_cost(job("cheapest"), cheapest, LUNA, settings()) < \
        estimate_cost(job(), fewest, LUNA, settings()) / 1.9


def test_without_a_price_tier_the_cheapest_plan_is_the_fewest_calls() -> None:
    doc = text_document(pages=100, tokens_per_page=5_000)
    fewest = make_plan(job(), [doc], NANO, settings(), NoPages())
    cheapest = make_plan(job("cheapest"), [doc], NANO, settings(), NoPages())
    assert [c.prompt_tokens for c in cheapest.chunks] == [c.prompt_tokens for c in fewest.chunks]
    assert len(cheapest.chunks) == 1


def test_a_document_under_the_threshold_is_one_call_either_way() -> None:
    doc = text_document(pages=40, tokens_per_page=5_000)  # 200K: one call below 272K
    cheapest = make_plan(job("cheapest"), [doc], LUNA, settings(), NoPages())
    assert len(cheapest.chunks) == 1
