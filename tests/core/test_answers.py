"""Cut-off answers keep what they hold whole, and say where the job goes on from."""

from __future__ import annotations

import json
from typing import Any

import pytest

from service.core.answers import (
    ChunkText,
    complete_prefix,
    covered_tokens,
    locate_items,
    parse_partial,
    read_answer,
    resume_part,
)

ROWS = [{"number": f"R-{n:05d}", "amount": n * 1.5} for n in range(1, 7)]
FULL = json.dumps({"title": "Ledger", "rows": ROWS, "note": "end"}, separators=(",", ":"))


@pytest.mark.parametrize("cut", range(1, len(FULL)))
def test_every_cut_keeps_exactly_the_items_printed_whole_before_it(cut: int) -> None:
    kept = parse_partial(FULL[:cut])
    assert isinstance(kept, dict)
    whole = [r for r in ROWS if json.dumps(r, separators=(",", ":")) in FULL[:cut]]
    assert kept.get("rows", []) == whole
    if "title" in kept:
        assert kept["title"] == "Ledger"  # a member is kept only when its value is whole
    assert "note" not in kept or kept["note"] == "end"


def test_a_number_at_the_cut_is_not_kept_it_may_have_had_more_digits() -> None:
    assert parse_partial('{"rows":[{"n":"a","amount":12') == {"rows": []}
    assert parse_partial('{"values":[1,2,3') == {"values": [1, 2]}
    assert parse_partial('{"values":[1,2,3,') == {"values": [1, 2, 3]}


def test_strings_with_brackets_and_escaped_quotes_do_not_confuse_the_cut() -> None:
    text = '{"rows":[{"t":"a \\"]}, quoted"},{"t":"b'
    assert parse_partial(text) == {"rows": [{"t": 'a "]}, quoted'}]}


def test_nested_arrays_are_items_of_the_outer_one() -> None:
    assert parse_partial('{"m":{"t":"x","grid":[[1,2],[3') == {"m": {"t": "x", "grid": [[1, 2]]}}


def test_what_is_not_the_start_of_an_object_holds_nothing() -> None:
    assert complete_prefix("Sorry, I cannot") is None
    assert complete_prefix("[1, 2") is None
    assert parse_partial("") is None
    assert complete_prefix('{"a":1}') == '{"a":1}'


def test_a_whole_answer_must_be_a_json_object() -> None:
    with pytest.raises(ValueError):
        read_answer('{"a": 1', cut=False, cited=False)
    with pytest.raises(ValueError):
        read_answer("[1]", cut=False, cited=False)
    assert read_answer('{"a": 1', cut=True, cited=False).data == {}


def test_citations_are_taken_apart_and_a_cut_before_sources_has_none() -> None:
    whole = read_answer('{"data":{"rows":[{"n":"R-1"}]},"sources":[{"path":"/rows/0/n",'
                        '"document":1,"page":2,"quote":"R-1"}]}', cut=False, cited=True)
    assert whole.data == {"rows": [{"n": "R-1"}]} and whole.complete
    assert whole.sources == [{"path": "/rows/0/n", "document": 1, "page": 2, "quote": "R-1"}]
    cut = read_answer('{"data":{"rows":[{"n":"R-1"},{"n":"R-2"}', cut=True, cited=True)
    assert cut.data == {"rows": [{"n": "R-1"}, {"n": "R-2"}]} and cut.sources is None
    assert cut.items == 2


PAGES = ["Ledger page 1\nR-00001 bolts 1.50\nR-00002 nuts 3.00",
         "Ledger page 2\nR-00003 bolts 4.50\nR-00004 valves 6.00",
         "Ledger page 3\nR-00005 bolts 7.50\nR-00006 fuses 9.00"]
TEXT = ChunkText([(1, 1), (1, 2), (1, 3)], list(PAGES))


def test_items_are_found_on_the_page_they_are_printed_on() -> None:
    located = locate_items({"rows": ROWS}, TEXT)
    assert located == {"/rows": [0, 0, 1, 1, 2, 2]}
    # A value printed in another format (1.5 for "1.50") is found all the same.
    assert locate_items({"rows": [{"amount": 7.5}]}, TEXT) == {"/rows": [2]}
    assert locate_items({"rows": [{"x": "not printed"}]}, TEXT) == {"/rows": [None]}


def answer(data: dict[str, Any], sources: list[dict[str, Any]] | None = None,
           complete: bool = False) -> Any:
    from service.core.answers import Answer

    return Answer(data, sources, complete)


def test_a_continuation_starts_on_the_page_of_the_last_complete_item() -> None:
    cut = answer({"rows": ROWS[:3]})
    assert resume_part(cut, locate_items(cut.data, TEXT), cited=False) == 1
    # Nothing found on the pages: start over (the chunk is then cut smaller).
    lost = answer({"rows": [{"x": "nowhere"}]})
    assert resume_part(lost, locate_items(lost.data, TEXT), cited=False) == 0


def test_with_citations_the_item_of_the_last_source_is_read_again() -> None:
    data = {"rows": ROWS}  # every row whole, sources cut after the third row's first value
    sources = [{"path": f"/rows/{i}/number"} for i in range(3)]
    cut = answer(data, sources)
    assert resume_part(cut, locate_items(data, TEXT), cited=True) == 1
    assert resume_part(answer(data, None), locate_items(data, TEXT), cited=True) == 0
    assert resume_part(answer(data, []), locate_items(data, TEXT), cited=True) == 0


def test_covered_tokens_count_the_pages_before_the_resume_and_half_of_it() -> None:
    assert covered_tokens([100, 100, 100], 2) == 250
    assert covered_tokens([100], 0) == 50


def test_locating_thousands_of_paraphrased_items_stays_within_a_few_passes() -> None:
    """Unbounded, 3,000 unfound items over ~1.2 MB of text would scan gigabytes."""
    pages: list[str | None] = [f"Ledger page {p}\n" + "bolts nuts washers " * 600 for p in range(100)]
    text = ChunkText([(1, p) for p in range(100)], pages)
    items = {"rows": [{"n": f"paraphrased item {i}"} for i in range(3000)]}
    assert locate_items(items, text) == {"/rows": [None] * 3000}
    assert text.scanned <= 21 * len(text.joined)
