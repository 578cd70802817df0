"""Sources: where each value came from, asked of the model within the strict schema and checked
against the stored text of the page it names.

The model answers ``{"data": <the user's schema>, "sources": [{path, document, page, quote}]}``
(the shape docs/sandbox.md "Citations" describes: ``path`` a JSON Pointer into ``data``,
``document`` the 1-based position in the page header, ``quote`` verbatim page text). ``data``
is validated against the user's own schema, unchanged; the sources never enter it.

A quote is verified when it occurs in the text of the page it cites, at word boundaries, after
both are normalised the same way: Unicode compatibility forms, case, whitespace, typographic
quotes and dashes, and number formats (``1,234.50``, ``1.234,50`` and ``1234.5`` read alike).
The model copies text; the normalisation forgives how it copies, never what.
"""

from __future__ import annotations

import copy
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from schemas.strict import InvalidSchema, check_schema

SOURCE_FIELDS = ("path", "document", "page", "quote")
SOURCES_SCHEMA: dict[str, Any] = {
    "type": "array",
    "description": "One entry for every value in data taken from the pages.",
    "items": {
        "type": "object", "additionalProperties": False, "required": list(SOURCE_FIELDS),
        "properties": {
            "path": {"type": "string", "description": "JSON Pointer of the value in data"},
            "document": {"type": "integer", "description": "1-based, as in the page header"},
            "page": {"type": "integer", "description": "the page number in the page header"},
            "quote": {"type": "string",
                      "description": "a short verbatim quote of that page showing the value"},
        },
    },
}


def _rewrite_ref(ref: str) -> str:
    """A reference of the user's schema as seen from inside ``data``: definitions move to the
    root of the wrapper (strict mode resolves them there), anything else moves under data."""
    if ref.startswith(("#/$defs/", "#/definitions/")):
        return ref
    if ref in ("#", "#/"):
        return "#/properties/data"
    return "#/properties/data/" + ref[2:]


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, dict):
            yield current
            stack.extend(current.values())
        elif isinstance(current, list):
            stack.extend(current)


def cited_schema(user_schema: dict[str, Any]) -> dict[str, Any]:
    """The strict schema sent when a job asks for sources; raises InvalidSchema when the wrapper
    breaks a limit the user's schema alone keeps (one more level of nesting, six properties)."""
    data = {k: v for k, v in user_schema.items() if k not in ("$defs", "definitions")}
    wrapper: dict[str, Any] = {
        "type": "object", "additionalProperties": False, "required": ["data", "sources"],
        "properties": {"data": data, "sources": SOURCES_SCHEMA},
    }
    for key in ("$defs", "definitions"):
        if key in user_schema:
            wrapper[key] = user_schema[key]
    wrapper = copy.deepcopy(wrapper)
    for node in _walk(wrapper):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#"):
            node["$ref"] = _rewrite_ref(ref)
    try:
        return check_schema(wrapper)
    except InvalidSchema as exc:
        raise InvalidSchema(f"citations: {exc.message} once the schema is wrapped as "
                            "{data, sources}; run without citations") from None


# ------------------------------------------------------------------ normalisation

_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'",
                         "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u00ab": '"', "\u00bb": '"',
                         "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-",
                         "\u2212": "-", "\u00a0": " ", "\u202f": " "})
_SPACE = re.compile(r"\s+")
# A number with grouping or decimal separators: digits, then groups led by , . or '.
_NUMBER = re.compile(r"\d+(?:[.,']\d+)+")


def _canonical_number(token: str) -> str:
    """``1,234.50`` -> ``1234.5``. The last separator is the decimal one when both kinds appear;
    a single kind is grouping when it repeats or leads exactly three digits, else decimal.
    Leading zeros stay (``R-00012`` is not ``R-12``)."""
    seps = [c for c in token if c in ".,'"]
    kinds = set(seps)
    if len(kinds) > 1:
        decimal = seps[-1]
    elif len(seps) > 1 or len(token) - token.rfind(seps[0]) - 1 == 3:
        decimal = None
    else:
        decimal = seps[0]
    if decimal is None:
        return "".join(c for c in token if c.isdigit())
    whole, _, fraction = token.rpartition(decimal)
    whole = "".join(c for c in whole if c.isdigit())
    fraction = fraction.rstrip("0")
    try:
        Decimal(f"{whole or '0'}.{fraction or '0'}")
    except InvalidOperation:
        return token
    return f"{whole}.{fraction}" if fraction else whole


def normalise(text: str) -> str:
    """Text as quotes are compared: NFKC, case-folded, one space for any whitespace, typographic
    quotes and dashes as ASCII, numbers in one format."""
    text = unicodedata.normalize("NFKC", text).translate(_QUOTES).casefold()
    text = _SPACE.sub(" ", text).strip()
    return _NUMBER.sub(lambda m: _canonical_number(m.group(0)), text)


def value_text(value: Any) -> str | None:
    """A leaf value as it would be quoted (numbers without a trailing .0), or None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return repr(value) if isinstance(value, float) else str(value)
    if isinstance(value, str):
        return value
    return None


def find_at_boundary(haystack: str, needle: str, start: int = 0, end: int | None = None) -> int:
    """The first index in [start, end) where ``needle`` occurs not inside a longer word or
    number (``R-0001`` is not found in ``R-00010``); -1 when there is none."""
    if not needle:
        return -1
    end = len(haystack) if end is None else end
    at = haystack.find(needle, start, end)
    while at >= 0:
        before = haystack[at - 1] if at > 0 else " "
        after = haystack[at + len(needle)] if at + len(needle) < len(haystack) else " "
        if not (needle[0].isalnum() and before.isalnum()) and \
                not (needle[-1].isalnum() and after.isalnum()):
            return at
        at = haystack.find(needle, at + 1, end)
    return -1


# ------------------------------------------------------------------ verification


@dataclass
class PageTexts:
    """The stored text of the pages a job reads, normalised once each, by (position, page).

    ``load`` gives a page's text, or None for an image page (the model read a picture: there is
    no text to check a quote against)."""

    load: Callable[[int, int], str | None]
    allowed: Callable[[int, int], bool]
    _cache: dict[tuple[int, int], str | None] = field(default_factory=dict)

    def normalised(self, document: int, page: int) -> str | None:
        key = (document, page)
        if key not in self._cache:
            text = self.load(document, page)
            self._cache[key] = normalise(text) if text is not None else None
        return self._cache[key]


def verify(source: dict[str, Any], pages: PageTexts) -> bool | None:
    """True when the quote is on the cited page, False when it is not (or the page is not one
    the job read), None for an image page."""
    document, page, quote = source.get("document"), source.get("page"), source.get("quote")
    if not isinstance(document, int) or not isinstance(page, int) or not isinstance(quote, str):
        return False
    if not pages.allowed(document, page):
        return False
    text = pages.normalised(document, page)
    if text is None:
        return None
    needle = normalise(quote)
    return bool(needle) and find_at_boundary(text, needle) >= 0


@dataclass
class Grounding:
    """``sources`` of a result and the warnings about values no verified quote stands behind."""

    sources: dict[str, list[dict[str, Any]]]
    warnings: list[dict[str, Any]]


MAX_SOURCE_WARNINGS = 1000


def leaf_pointers(data: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every non-null scalar of ``data`` with its JSON Pointer, in document order."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield from leaf_pointers(value, f"{prefix}/{escape(str(key))}")
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from leaf_pointers(value, f"{prefix}/{i}")
    elif data is not None:
        yield prefix, data


def escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def ground(data: Any, sources: dict[str, list[dict[str, Any]]], pages: PageTexts,
           document_ids: list[str]) -> Grounding:
    """Verifies every source of every value of ``data`` (``sources`` by pointer, documents by
    position) and names the values without a verified one: a quote not on its page, a page
    the job did not read, or no source at all. Warnings carry paths and pages, never values."""
    out: dict[str, list[dict[str, Any]]] = {}
    warnings: list[dict[str, Any]] = []
    for pointer, _ in leaf_pointers(data):
        cited = sources.get(pointer, [])
        if not cited:
            warnings.append({"type": "no_source", "path": pointer or "/",
                             "message": "the model gave no source for this value"})
            continue
        entries = []
        for source in cited:
            verified = verify(source, pages)
            position = source.get("document")
            doc_id = (document_ids[position - 1] if isinstance(position, int)
                      and 1 <= position <= len(document_ids) else None)
            entries.append({"document": doc_id, "page": source.get("page"),
                            "quote": source.get("quote"), "verified": verified})
            if verified is False:
                warnings.append({"type": "unverified_source", "path": pointer or "/",
                                 "document": doc_id, "page": source.get("page"),
                                 "message": "the quote is not on the cited page"})
        out[pointer] = entries
    if len(warnings) > MAX_SOURCE_WARNINGS:
        more = len(warnings) - MAX_SOURCE_WARNINGS
        warnings = [*warnings[:MAX_SOURCE_WARNINGS],
                    {"type": "more_source_warnings", "count": more,
                     "message": f"{more} more values without a verified source"}]
    return Grounding(out, warnings)
