"""Where two answers meet: an item both read is kept once, and its sources follow it."""

from __future__ import annotations

from typing import Any

from service.core.merge import ChunkAnswer, merge_answers, supported_sources

SCHEMA: dict[str, Any] = {"type": "object", "properties": {
    "title": {"type": "string"},
    "rows": {"type": "array", "items": {"type": "object", "properties": {
        "n": {"type": "string"}, "amount": {"type": ["number", "null"]}}}}}}


def row(n: int, amount: float | None = 1.0) -> dict[str, Any]:
    return {"n": f"R-{n}", "amount": amount}


def chunk(rows: list[dict[str, Any]], pages: list[int], at: list[int | None],
          sources: list[dict[str, Any]] | None = None) -> ChunkAnswer:
    keys = [(1, p) for p in pages]
    return ChunkAnswer({"rows": rows}, sources,
                       {"/rows": [(1, p) if p is not None else None for p in at]},
                       frozenset(keys), keys[0], keys[-1])


def test_a_continuation_that_reads_its_first_page_again_adds_each_row_once() -> None:
    cut = chunk([row(1), row(2), row(3)], [1, 2], [1, 2, 2])  # cut after row 3 on page 2
    rest = chunk([row(2), row(3), row(4), row(5)], [2, 3], [2, 2, 2, 3])
    outcome = merge_answers([cut, rest], SCHEMA)
    assert [r["n"] for r in outcome.data["rows"]] == ["R-1", "R-2", "R-3", "R-4", "R-5"]
    assert [d.as_json()["path"] for d in outcome.duplicates] == ["/rows/1", "/rows/2"]
    assert all(d.as_json()["type"] == "duplicate" for d in outcome.duplicates)


def test_items_read_again_by_later_chunks_are_found_on_any_page_they_share() -> None:
    # A cut answer held every row whole but settled only the first; the rest was re-planned
    # into two chunks, each re-reading pages the cut answer had read.
    cut = chunk([row(1), row(2), row(3), row(4)], [1, 2, 3, 4], [1, 2, 3, 4])
    again = [chunk([row(2), row(3)], [2, 3], [2, 3]), chunk([row(4)], [4], [4])]
    outcome = merge_answers([cut, *again], SCHEMA)
    assert [r["n"] for r in outcome.data["rows"]] == ["R-1", "R-2", "R-3", "R-4"]
    assert len(outcome.duplicates) == 3


def test_a_row_printed_across_a_chunk_boundary_is_one_row_with_both_halves() -> None:
    before = chunk([row(1), row(2, amount=None)], [1], [1, 1])
    after = chunk([row(2, amount=7.0), row(3)], [2], [2, 2])
    rows = merge_answers([before, after], SCHEMA).data["rows"]
    assert rows == [row(1), row(2, amount=7.0), row(3)]


def test_rows_a_document_lists_twice_are_kept_twice() -> None:
    one = chunk([row(1), row(1)], [1], [1, 1])  # the same row twice on one page
    far = chunk([row(1), row(9), row(9)], [5], [5, 5, 5])  # again on a page no other chunk read
    outcome = merge_answers([one, far], SCHEMA)
    assert [r["n"] for r in outcome.data["rows"]] == ["R-1", "R-1", "R-1", "R-9", "R-9"]
    assert outcome.duplicates == []


def test_sources_are_re_pointed_to_where_their_items_landed() -> None:
    cut = chunk([row(1), row(2)], [1, 2], [1, 2],
                sources=[{"path": "/rows/0/n", "document": 1, "page": 1, "quote": "R-1"}])
    rest = chunk([row(2), row(3)], [2, 3], [2, 3],
                 sources=[{"path": "/rows/0/n", "document": 1, "page": 2, "quote": "R-2"},
                          {"path": "/rows/1/n", "document": 1, "page": 3, "quote": "R-3"},
                          {"path": "/rows/7/n", "document": 1, "page": 3, "quote": "nothing"}])
    outcome = merge_answers([cut, rest], SCHEMA)
    assert outcome.sources is not None
    kept = supported_sources(outcome.data, outcome.sources)
    assert {p: [s["quote"] for s in v] for p, v in kept.items()} == {
        "/rows/0/n": ["R-1"], "/rows/1/n": ["R-2"], "/rows/2/n": ["R-3"]}


def test_a_conflicts_losing_value_loses_its_source() -> None:
    first = ChunkAnswer({"title": "Lease"}, [{"path": "/title", "document": 1, "page": 1,
                                               "quote": "Lease"}])
    second = ChunkAnswer({"title": "Annex"}, [{"path": "/title", "document": 1, "page": 9,
                                               "quote": "Annex"}])
    outcome = merge_answers([first, second], SCHEMA)
    assert outcome.data["title"] == "Lease" and [c.path for c in outcome.conflicts] == ["/title"]
    assert outcome.sources is not None
    assert supported_sources(outcome.data, outcome.sources) == {
        "/title": [{"path": "/title", "document": 1, "page": 1, "quote": "Lease"}]}
