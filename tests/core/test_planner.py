"""The plan: budget per call, the fewest balanced chunks, page splitting, exact accounting."""

from __future__ import annotations

import math

import pytest

from service.core.pages import PageInfo
from service.core.planner import (
    MAX_IMAGES_PER_CALL,
    PlanningError,
    call_budget,
    header_tokens,
    page_parts,
    plan_chunks,
    split_in_two,
    split_text_page,
)
from service.core.profiles import get_profile
from service.core.prompt import count_request, fixed_overhead, format_fields, page_header, system_text
from service.core.tokens import count_text

NANO = get_profile("gpt-4.1-nano")
SCHEMA = {"type": "object", "properties": {"title": {"type": ["string", "null"]}},
          "required": ["title"], "additionalProperties": False}


def no_text(d: int, p: int) -> str:
    raise AssertionError("no page should need its text here")


def text_pages(n: int, tokens: int) -> list[PageInfo]:
    return [PageInfo("text", tokens) for _ in range(n)]


def test_budget_is_the_smallest_cap_less_output_overhead_and_margin() -> None:
    assert call_budget(NANO, overhead=500, reserved_output=32768, safety_margin=2048) == \
        1_047_576 - 32768 - 500 - 2048
    # An account whose TPM limit is below the window cannot send a window-sized request:
    # a request is charged max(prompt, max_tokens) against it.
    assert call_budget(NANO, overhead=500, reserved_output=32768, safety_margin=2048,
                       tpm_limit=200_000) == 200_000 - 500 - 2048
    assert call_budget(NANO, overhead=500, reserved_output=1000, safety_margin=0,
                       tpm_limit=200_000, max_tokens_per_call=50_000) == 50_000 - 1500
    with pytest.raises(PlanningError):
        call_budget(NANO, overhead=500, reserved_output=32768, safety_margin=0, max_tokens_per_call=4096)


def test_everything_that_fits_goes_in_one_call() -> None:
    pages = text_pages(1000, 900)
    budget = sum(header_tokens(1, p) + 900 for p in range(1, 1001))
    plan = plan_chunks([pages], NANO, overhead=100, budget=budget, load_text=no_text)
    assert len(plan.chunks) == 1
    assert plan.chunks[0].prompt_tokens == budget + 100
    plan = plan_chunks([pages], NANO, overhead=100, budget=budget - 1, load_text=no_text)
    assert len(plan.chunks) == 2


@pytest.mark.parametrize("total_pages", [1500, 3000, 4400, 7000])
def test_fewest_chunks_balanced_in_size(total_pages: int) -> None:
    pages = text_pages(total_pages, 690)
    budget = 1_000_000
    plan = plan_chunks([pages], NANO, overhead=0, budget=budget, load_text=no_text)
    sizes = [c.prompt_tokens for c in plan.chunks]
    total = sum(sizes)
    assert len(sizes) == math.ceil(total / budget), "no more calls than the lower bound"
    assert max(sizes) <= budget
    # A greedy fill would leave a small last chunk; balanced ones differ by about one page.
    assert (max(sizes) - min(sizes)) / max(sizes) < 0.02


def test_order_is_kept_and_documents_are_packed_together() -> None:
    docs = [text_pages(3, 100), text_pages(2, 100), text_pages(4, 100)]
    plan = plan_chunks(docs, NANO, overhead=0, budget=10_000, load_text=no_text)
    assert len(plan.chunks) == 1
    assert [(p.document, p.page) for p in plan.chunks[0].parts] == [
        (1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (3, 1), (3, 2), (3, 3), (3, 4)]


def test_images_are_never_split_and_count_by_the_patch_formula() -> None:
    pages = [PageInfo("image", 0, 1024, 1024), PageInfo("text", 50), PageInfo("image", 0, 1800, 2400)]
    plan = plan_chunks([pages], NANO, overhead=0, budget=1_000_000, load_text=no_text)
    tokens = [p.tokens for p in plan.chunks[0].parts]
    # 1024 x 1024: 1024 patches; 1800 x 2400: 1452 patches (OpenAI vision guide); x 2.46 for nano.
    assert tokens[0] == header_tokens(1, 1, None, True) + math.ceil(1024 * 2.46)
    assert tokens[2] == header_tokens(1, 3, None, True) + math.ceil(1452 * 2.46)
    with pytest.raises(PlanningError) as err:
        plan_chunks([pages], NANO, overhead=0, budget=3000, load_text=no_text)
    assert err.value.code == "page_too_large"


def test_a_call_carries_at_most_500_images() -> None:
    pages = [PageInfo("image", 0, 64, 64) for _ in range(1200)]
    plan = plan_chunks([pages], NANO, overhead=0, budget=1_000_000, load_text=no_text)
    assert all(chunk.images <= MAX_IMAGES_PER_CALL for chunk in plan.chunks)
    assert len(plan.chunks) == 3


def _long_page(paragraphs: int = 40) -> str:
    return "\n\n".join(
        " ".join(f"Sentence {p}.{s} says something about clause {s} of the contract." for s in range(30))
        for p in range(paragraphs))


def test_a_page_larger_than_a_call_is_split_at_paragraphs_in_order() -> None:
    text = _long_page()
    total = count_text(text)
    parts = split_text_page(1, 7, text, total // 3)
    assert len(parts) in (3, 4)
    assert all(p.tokens <= total // 3 for p in parts)
    spans = [p.span for p in parts if p.span is not None]
    assert len(spans) == len(parts), "every part of a split page has its span"
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False)), "contiguous, in order"
    for start, _ in spans[1:]:
        assert text[start - 2:start] == "\n\n", "cut at a paragraph boundary"
    for part, (start, end) in zip(parts, spans, strict=True):  # exact accounting, header included
        assert part.tokens == count_text(page_header(1, 7, part.part) + text[start:end])


def test_a_single_paragraph_is_split_at_sentences() -> None:
    text = " ".join(f"Sentence number {i} of one very long paragraph." for i in range(2000))
    parts = split_text_page(1, 1, text, count_text(text) // 4)
    for part in parts[1:]:
        assert part.span is not None and text[part.span[0] - 2] == "."


def test_oversized_pages_are_split_while_planning() -> None:
    text = _long_page()
    pages = [PageInfo("text", 100), PageInfo("text", count_text(text)), PageInfo("text", 100)]
    plan = plan_chunks([pages], NANO, overhead=0, budget=count_text(text) // 2,
                       load_text=lambda d, p: text)
    parts = [p for c in plan.chunks for p in c.parts]
    assert [p.page for p in parts][0] == 1 and [p.page for p in parts][-1] == 3
    assert sum(1 for p in parts if p.page == 2) >= 2


def test_a_chunk_cut_off_is_halved_and_a_lone_image_cannot_be() -> None:
    parts = page_parts([text_pages(10, 1000)], NANO, detail="auto", budget=100_000, load_text=no_text)
    first, second = split_in_two(parts, no_text)
    assert first + second == parts and abs(len(first) - len(second)) <= 1
    text = _long_page(10)
    lone = page_parts([[PageInfo("text", count_text(text))]], NANO, detail="auto", budget=1_000_000,
                      load_text=lambda d, p: text)
    halves = split_in_two(lone, lambda d, p: text)
    assert len(halves) >= 2 and all(h[0].span for h in halves)
    image = page_parts([[PageInfo("image", 0, 500, 500)]], NANO, detail="auto", budget=1_000_000,
                       load_text=no_text)
    with pytest.raises(PlanningError):
        split_in_two(image, no_text)


def test_a_request_counts_exactly_overhead_plus_its_pages() -> None:
    texts = ["First page. Invoice 42 total 100.", "/second starts with a slash", "Über 3 Seiten"]
    content = [{"type": "text", "text": page_header(1, i + 1) + t} for i, t in enumerate(texts)]
    body = {"messages": [{"role": "system", "content": system_text("Be exact.")},
                         {"role": "user", "content": content}], **format_fields(SCHEMA, "json_schema")}
    expected = fixed_overhead(NANO, "Be exact.", SCHEMA, "json_schema") + sum(
        header_tokens(1, i + 1) + count_text(t) for i, t in enumerate(texts))
    assert count_request(body, NANO) == expected
