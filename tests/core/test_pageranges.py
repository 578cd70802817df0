"""Page ranges: what a job may name, and the reason when it names what is not there."""

from __future__ import annotations

import pytest

from service.core.jobs import DocumentPages, check_page_specs, selected_pages
from service.core.pageranges import InvalidPages, parse_ranges, select_pages


def test_ranges_single_pages_and_open_ends_name_each_page_once() -> None:
    assert select_pages("1-5,9", 20) == [1, 2, 3, 4, 5, 9]
    assert select_pages(" 3 - 4 , 4,2", 20) == [2, 3, 4]
    assert select_pages("18-", 20) == [18, 19, 20]
    assert parse_ranges("1-9999999") == [(1, 9999999)]  # not expanded before it is bounded


@pytest.mark.parametrize(("spec", "reason"), [
    ("", "give pages"), ("5-3", "runs backwards"), ("0-2", "numbered from 1"),
    ("1-5,x", "is not a page or a range"), ("1;2", "is not a page or a range"),
    ("12345678", "is not a page or a range"), ("19-21", "has 20 page(s)"), ("21", "has 20 page(s)"),
])
def test_a_range_that_names_no_page_of_the_document_says_why(spec: str, reason: str) -> None:
    with pytest.raises(InvalidPages) as caught:
        select_pages(spec, 20, "pages[doc_x]")
    assert reason in caught.value.message and caught.value.code == "invalid_pages"
    assert caught.value.message.startswith("pages[doc_x]")


def test_pages_must_name_the_jobs_documents_and_the_others_are_read_whole() -> None:
    with pytest.raises(InvalidPages, match="not in document_ids"):
        check_page_specs({"doc_" + "b" * 24: "1"}, ["doc_" + "a" * 24])
    docs = [DocumentPages("application/pdf", [["text", 10]] * 4, None, "doc_a"),
            DocumentPages("application/pdf", [["text", 10]] * 3, None, "doc_b")]
    assert selected_pages({"pages": {"doc_b": "2-"}}, docs) == [None, {2, 3}]
    assert selected_pages({}, docs) is None
