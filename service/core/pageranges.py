"""Page ranges a job reads, per document: ``"1-5,9"``, ``"10-"`` (to the last page).

A spec is checked in two steps: its syntax when the job is created, and its pages against the
document's page count as soon as that is known (at once for a ready document, at planning for
one still being read). A range is never expanded before it is bounded by the page count, so a
spec like ``"1-9999999"`` costs nothing.
"""

from __future__ import annotations

import re

from schemas.errors import ErrorCode, LongdocError

MAX_SPEC_CHARS = 2000
_ITEM = re.compile(r"^\s*(\d{1,7})\s*(?:(-)\s*(\d{1,7})?\s*)?$")

Range = tuple[int, int | None]  # first and last page, 1-based; None: to the document's end


class InvalidPages(LongdocError):
    """A page range that names no page, or pages the document does not have."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.INVALID_PAGES, message)


def parse_ranges(spec: str, label: str = "pages") -> list[Range]:
    """The ranges of a spec, in the order given, or raises InvalidPages saying why."""
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidPages(f"{label}: give pages as ranges such as \"1-5,9\"")
    if len(spec) > MAX_SPEC_CHARS:
        raise InvalidPages(f"{label}: at most {MAX_SPEC_CHARS} characters of ranges")
    ranges: list[Range] = []
    for item in spec.split(","):
        match = _ITEM.match(item)
        if match is None:
            raise InvalidPages(f"{label}: {item.strip()[:20]!r} is not a page or a range "
                               "(N, N-M or N-)")
        first = int(match.group(1))
        last = first if match.group(2) is None else (
            int(match.group(3)) if match.group(3) is not None else None)
        if first < 1:
            raise InvalidPages(f"{label}: pages are numbered from 1")
        if last is not None and last < first:
            raise InvalidPages(f"{label}: the range {first}-{last} runs backwards")
        ranges.append((first, last))
    return ranges


def select_pages(spec: str, page_count: int, label: str = "pages") -> list[int]:
    """The pages a spec names, ascending, each once; every page must exist in the document."""
    chosen: set[int] = set()
    for first, last in parse_ranges(spec, label):
        end = page_count if last is None else last
        if first > page_count or end > page_count:
            raise InvalidPages(f"{label}: the document has {page_count} page(s); the range "
                               f"{first}-{end if last is not None else ''} goes beyond it")
        chosen.update(range(first, end + 1))
    return sorted(chosen)
