"""Sources: the wire schema that asks for them, and the check of every quote against its page."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.strict import InvalidSchema, check_schema
from service.core.citations import PageTexts, cited_schema, ground, normalise, verify
from service.core.jobs import resolve_citations

PAGES = {(1, 1): "Invoice INV-0001\nTotal due:  1,234.50 EUR\n\u201cAcme\u201d Corp",
         (1, 2): "Row R-00010 bolts", (2, 1): None}  # (2, 1) was read as an image


def texts(allowed: set[tuple[int, int]] | None = None) -> PageTexts:
    keys = allowed if allowed is not None else set(PAGES)
    return PageTexts(lambda d, p: PAGES[(d, p)], lambda d, p: (d, p) in keys)


def source(quote: str, document: int = 1, page: int = 1) -> dict[str, Any]:
    return {"path": "/x", "document": document, "page": page, "quote": quote}


@pytest.mark.parametrize("quote", ["Total due: 1,234.50", "total DUE: 1234.5", "1.234,50 eur",
                                   '"acme" corp', "INVOICE  INV-0001"])
def test_a_quote_copied_loosely_is_still_found_on_its_page(quote: str) -> None:
    assert verify(source(quote), texts()) is True


@pytest.mark.parametrize("quote", ["1,234.55", "INV-0002", "Acme Corporation", "", "R-0001"])
def test_a_quote_that_is_not_on_its_page_is_refuted(quote: str) -> None:
    page = 2 if quote == "R-0001" else 1  # R-0001 is not R-00010: words and numbers stay whole
    assert verify(source(quote, page=page), texts()) is False


def test_the_wrong_page_an_unread_page_and_an_image_page() -> None:
    assert verify(source("INV-0001", page=2), texts()) is False
    assert verify(source("INV-0001"), texts(allowed={(1, 2)})) is False
    assert verify(source("anything", document=2), texts()) is None
    assert verify({"document": "1", "page": 1, "quote": "INV-0001"}, texts()) is False


def test_numbers_are_compared_in_one_format_but_keep_their_leading_zeros() -> None:
    assert normalise("1,234.50") == normalise("1.234,50") == normalise("1234.5") == "1234.5"
    assert normalise("R-00012") != normalise("R-12")
    assert normalise("2024-01-05") == "2024-01-05"


def test_sources_are_keyed_by_pointer_with_document_ids_and_unverified_values_warned() -> None:
    data = {"number": "INV-0001", "total": 1234.5, "buyer": "Acme", "note": None}
    sources = {"/number": [source("INV-0001")],
               "/total": [source("Total due: 1,234.50"), source("1,234.50", page=2)]}
    grounding = ground(data, sources, texts(), ["doc_a", "doc_b"])
    assert grounding.sources == {
        "/number": [{"document": "doc_a", "page": 1, "quote": "INV-0001", "verified": True}],
        "/total": [{"document": "doc_a", "page": 1, "quote": "Total due: 1,234.50",
                    "verified": True},
                   {"document": "doc_a", "page": 2, "quote": "1,234.50", "verified": False}]}
    assert [(w["type"], w["path"]) for w in grounding.warnings] == [
        ("unverified_source", "/total"), ("no_source", "/buyer")]
    assert all("quote" not in w and "1,234" not in str(w) for w in grounding.warnings)


USER: dict[str, Any] = {
    "type": "object", "required": ["items"],
    "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/item"}},
                   "parent": {"$ref": "#"}},
    "$defs": {"item": {"type": "object", "properties": {"name": {"type": "string"}},
                       "required": ["name"]}},
}


def test_the_cited_schema_wraps_the_users_and_keeps_its_references_working() -> None:
    wire = cited_schema(USER)
    assert list(wire["properties"]) == ["data", "sources"] and wire["required"] == ["data", "sources"]
    item = wire["properties"]["sources"]["items"]
    assert set(item["properties"]) == {"path", "document", "page", "quote"}
    data = wire["properties"]["data"]
    assert data["properties"]["items"]["items"] == {"$ref": "#/$defs/item"}
    assert "item" in wire["$defs"] and "$defs" not in data
    # A reference to the user's root now points at data.
    assert data["properties"]["parent"]["anyOf"][0] == {"$ref": "#/properties/data"}


def test_a_schema_the_wrapper_would_nest_too_deep_cannot_have_citations() -> None:
    deep: dict[str, Any] = {"type": "string"}
    for i in range(9):
        deep = {"type": "object", "properties": {f"l{i}": deep}, "required": [f"l{i}"]}
    check_schema(deep)  # ten levels: fine alone
    with pytest.raises(InvalidSchema, match="citations"):
        cited_schema(deep)
    assert resolve_citations(deep, None) is False
    with pytest.raises(InvalidSchema):
        resolve_citations(deep, True)


def test_citations_default_on_only_when_no_array_grows_with_the_document() -> None:
    fixed = {"type": "object", "properties": {"total": {"type": "number"},
                                              "tags": {"type": "array", "maxItems": 5,
                                                       "items": {"type": "string"}}}}
    assert resolve_citations(fixed, None) is True
    assert resolve_citations(USER, None) is False
    assert resolve_citations(USER, True) is True
    assert resolve_citations(fixed, False) is False
