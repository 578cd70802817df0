"""Output-aware plans: each call holds its prompt and its answer; answers that grow with the
document are bounded from the schema until the job's own answers say how long they are."""

from __future__ import annotations

import math
from typing import Any

import pytest

from schemas.strict import check_schema
from service.core.jobs import output_tokens_for_call
from service.core.pages import PageInfo
from service.core.planner import Limits, Part, balanced_chunks, plan_chunks, replan
from service.core.profiles import get_profile
from service.core.settings import Settings
from service.core.sizing import (
    ANSWER_MARGIN,
    AnswerSize,
    answer_size,
    lower_bound_calls,
    observed_ratio,
    usable_output,
)

NANO = get_profile("gpt-4.1-nano")
ROWS: dict[str, Any] = {"type": "object", "properties": {
    "account": {"type": "string"},
    "rows": {"type": "array", "items": {"type": "object", "properties": {
        "number": {"type": "string"}, "amount": {"type": "number"}}}}}}
FIXED: dict[str, Any] = {"type": "object", "properties": {
    "title": {"type": "string"}, "tags": {"type": "array", "maxItems": 5,
                                          "items": {"type": "string"}}}}


def no_text(d: int, p: int) -> str:
    raise AssertionError("no page should need its text here")


def test_only_arrays_without_a_small_bound_grow_with_the_document() -> None:
    grows, fixed = answer_size(check_schema(ROWS), False), answer_size(check_schema(FIXED), False)
    assert grows.grows and grows.ratio > 1  # keys and quotes cost more than the printed values
    assert not fixed.grows and fixed.fixed > 10
    # Sources (one per value, ~25 tokens) multiply an answer that grows.
    assert answer_size(check_schema(ROWS), True).ratio > 3 * grows.ratio


def test_the_usable_output_keeps_a_margin_and_the_lower_bound_takes_the_larger_need() -> None:
    assert usable_output(32768) == math.floor(32768 * (1 - ANSWER_MARGIN))
    assert lower_bound_calls(100_000, 1_000_000, 150_000, 27_852) == 6
    assert lower_bound_calls(3_000_000, 1_000_000, 1_000, 27_852) == 3
    assert observed_ratio(30_000, 20_000, fixed=10, answers=2) == pytest.approx(1.499)


def test_calls_are_cut_by_the_answer_when_it_is_the_larger_need() -> None:
    pages = [[PageInfo("text", 1000) for _ in range(100)]]
    size = AnswerSize(fixed=20, ratio=1.5)  # ~150k tokens of answer for ~100k of pages
    usable = usable_output(32768)
    plan = plan_chunks(pages, NANO, overhead=100, budget=1_000_000, load_text=no_text,
                       answer=size, usable_output=usable)
    page_tokens = sum(c.prompt_tokens - 100 for c in plan.chunks)
    bound = lower_bound_calls(page_tokens, 1_000_000, size.tokens(page_tokens), usable)
    assert len(plan.chunks) == bound == 6
    answers = [size.tokens(c.prompt_tokens - 100) for c in plan.chunks]
    # Balanced to the page: no call holds two pages' worth of answer more than another.
    assert max(answers) <= usable and max(answers) - min(answers) <= 2 * size.tokens(1000)
    # The same pages with an answer that does not grow: one call, as before.
    assert len(plan_chunks(pages, NANO, overhead=100, budget=1_000_000, load_text=no_text,
                           answer=AnswerSize(20, 0.0), usable_output=usable).chunks) == 1


def test_a_chunk_cut_before_anything_was_settled_is_never_sent_again_as_it_was() -> None:
    parts = [Part(1, p, 1000) for p in range(1, 5)]
    limits = Limits(1_000_000, AnswerSize(0, 0.001), 27_852)  # it would fit, by the ratio
    assert replan(parts, limits, no_text) == [parts]
    halves = replan(parts, limits, no_text, again=parts)
    assert halves == [parts[:2], parts[2:]]
    more = replan([*parts, Part(1, 5, 1000)], limits, no_text, again=parts)
    assert more == [parts[:2], parts[2:], [Part(1, 5, 1000)]]


def test_balancing_by_budget_alone_is_unchanged() -> None:
    parts = [Part(1, p, 100) for p in range(1, 11)]
    assert balanced_chunks(parts, 450) == balanced_chunks(parts, Limits(450))
    assert [len(c) for c in balanced_chunks(parts, 450)] == [4, 4, 2]


def test_each_call_asks_for_the_answer_it_may_hold_with_room_to_spare() -> None:
    settings = Settings()
    # Small prompt, small answer: the 2048-token floor.
    assert output_tokens_for_call(settings, NANO, {}, 1000, 300) == 2048
    # An answer expected near the usable output asks for the whole cap (never more).
    assert output_tokens_for_call(settings, NANO, {}, 20_000, 27_852) == 32_768
    assert output_tokens_for_call(settings, NANO, {}, 20_000, 10_000) == 15_000
    assert output_tokens_for_call(settings, NANO, {"max_output_tokens": 4000}, 20_000, 27_852) == 4000


def test_a_schema_that_refers_to_itself_many_times_over_is_estimated_in_bounded_time() -> None:
    """Unbounded, this would sample 10^11 values and run into the test timeout."""
    defs: dict[str, Any] = {"d0": {"type": "string"}}
    for level in range(1, 12):  # each level: ten properties of the level below: 10^11 values
        defs[f"d{level}"] = {"type": "object", "properties": {
            f"p{i}": {"$ref": f"#/$defs/d{level - 1}"} for i in range(10)}}
    schema = {"type": "object", "properties": {"top": {"$ref": "#/$defs/d11"}}, "$defs": defs}
    size = answer_size(check_schema(schema), True)
    assert 0 < size.fixed < 5000 * 40 and not size.grows
