"""Answers as the model gives them: whole, or cut off at the output cap.

A cut answer (``finish_reason: "length"``) is paid for, so it is kept: everything before the
cut that is *complete* is used, and the job continues from the page of the last complete item
instead of asking again for everything.

"Complete" is decided on the text, not on the parsed value. pydantic-core's partial mode (the
``jiter`` parser pydantic itself uses, already installed with it) closes whatever is open at
the end: it would turn ``[{"n": "R-1"}, {"n": "R-2", "amount": 12`` into two items, the second
with an amount that may have been ``125``. So a small scanner first finds where the last
complete item ends, and only that prefix is handed to ``from_json(..., allow_partial=True)``,
which then only has to close the containers around it.

Items are the elements of the arrays reached from the root through objects only (``/rows/17``,
``/data/lines/3``); an item is atomic: half an item is dropped, never kept. Members of the
objects around them are kept when complete (a title before the rows survives a cut in the rows).
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic_core import from_json

from service.core.citations import escape, find_at_boundary, normalise, value_text

_SCALAR_END = set(",]} \t\r\n")


@dataclass
class _Open:
    kind: str  # "{" or "["
    keepable: bool  # the root, or an object member whose parents are all kept
    last_end: int  # just after its last complete child (or its opening bracket)
    expect_key: bool = False


def complete_prefix(text: str) -> str | None:
    """The longest prefix of a cut-off JSON answer whose items are all complete, or None when
    the text is not the start of a JSON object. Closing what is still open is left to the
    partial parser."""
    stack: list[_Open] = []
    in_string = escaped = is_key = False
    scalar_start = -1
    started = False

    def value_ended(end: int) -> None:
        if stack:
            stack[-1].last_end = end

    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
                if not is_key:
                    value_ended(i + 1)
            continue
        if scalar_start >= 0 and ch in _SCALAR_END:
            value_ended(i)  # a number or literal ends only where a delimiter follows it
            scalar_start = -1
        if ch in " \t\r\n":
            continue
        if ch in "{[":
            if not started and ch != "{":
                return None
            started = True
            parent = stack[-1] if stack else None
            keepable = parent is None or (parent.keepable and parent.kind == "{")
            stack.append(_Open(ch, keepable, i + 1, expect_key=ch == "{"))
        elif ch in "}]":
            if not stack:
                return None
            stack.pop()
            value_ended(i + 1)
            if not stack:
                return text[:i + 1]  # the whole answer is there
        elif ch == '"':
            if not started:
                return None
            in_string = True
            is_key = bool(stack) and stack[-1].kind == "{" and stack[-1].expect_key
            if is_key:
                stack[-1].expect_key = False
        elif ch == ",":
            if stack and stack[-1].kind == "{":
                stack[-1].expect_key = True
        elif ch == ":":
            continue
        elif scalar_start < 0:
            if not started:
                return None
            scalar_start = i
    if not stack:
        return None
    deepest = max(i for i, node in enumerate(stack) if node.keepable)
    return text[:stack[deepest].last_end]


def parse_partial(text: str) -> Any:
    """What a cut-off answer holds whole (containers closed), or None."""
    prefix = complete_prefix(text)
    if prefix is None:
        return None
    try:
        return from_json(prefix, allow_partial=True)
    except ValueError:
        return None


@dataclass
class Answer:
    """One call's answer: its data (the user's schema), the sources it gave, whether it is
    whole, and how many items it holds."""

    data: Any
    sources: list[dict[str, Any]] | None
    complete: bool

    @property
    def items(self) -> int:
        return sum(len(items) for _, items in item_arrays(self.data))


def read_answer(raw: str | None, cut: bool, cited: bool) -> Answer:
    """The answer of one call. A whole answer must be JSON (ValueError otherwise); a cut one
    keeps what it holds whole. With citations, the model's ``{data, sources}`` is taken apart."""
    if cut:
        value = parse_partial(raw or "")
        value = value if isinstance(value, dict) else {}
    else:
        if raw is None:
            raise ValueError("the answer is empty")
        value = json.loads(raw)
        if not isinstance(value, dict):
            raise ValueError("the answer is not a JSON object")
    if not cited:
        return Answer(value, None, not cut)
    data = value.get("data")
    raw_sources = value.get("sources")
    sources = [s for s in raw_sources if isinstance(s, dict)
               and isinstance(s.get("path"), str)] if isinstance(raw_sources, list) else None
    if not cut and not isinstance(data, dict):
        raise ValueError("the answer has no data object")
    return Answer(data if isinstance(data, dict) else {}, sources, not cut)


def item_arrays(data: Any, prefix: str = "") -> Iterator[tuple[str, list[Any]]]:
    """The arrays whose elements are items: reached from the root through objects only."""
    if isinstance(data, dict):
        for key, value in data.items():
            pointer = f"{prefix}/{escape(str(key))}"
            if isinstance(value, list):
                yield pointer, value
            else:
                yield from item_arrays(value, pointer)


def scalar_leaves(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for sub in value.values():
            yield from scalar_leaves(sub)
    elif isinstance(value, list):
        for sub in value:
            yield from scalar_leaves(sub)
    elif value is not None and not isinstance(value, bool):
        yield value


# ------------------------------------------------------------------ where items are printed

Location = tuple[int, int]  # (document position, page)
FORWARD_WINDOW = 100_000  # characters after the previous item (~25 pages) searched first
SEARCH_PASSES = 20  # searches of the whole text allowed per answer, in all


@dataclass
class ChunkText:
    """The text of a chunk's parts as the model read it, normalised and laid end to end, to find
    where an item is printed. Image parts have no text: items read from them are not located."""

    keys: list[Location]  # (document, page) of each part
    texts: list[str | None]
    joined: str = ""
    starts: list[int] = field(default_factory=list)
    scanned: int = 0  # characters searched from the start so far
    budget: int = 0

    def __post_init__(self) -> None:
        pieces, offset = [], 0
        for text in self.texts:
            self.starts.append(offset)
            piece = normalise(text) if text else ""
            pieces.append(piece)
            offset += len(piece) + 1
        self.joined = "\n".join(pieces)
        self.budget = SEARCH_PASSES * len(self.joined)

    def part_at(self, offset: int) -> int:
        return bisect.bisect_right(self.starts, offset) - 1

    def locate(self, item: Any, cursor: int) -> int | None:
        """The offset where ``item`` is printed: its most telling leaf (one with digits, then the
        longest) found after ``cursor`` (items come in page order), else anywhere. The work is
        bounded: a forward window, then whole-text searches while the budget lasts, so a model
        that paraphrases thousands of items costs a few passes over the text, not thousands."""
        needles = {normalise(t) for t in (value_text(v) for v in scalar_leaves(item)) if t}
        ranked = sorted((n for n in needles if len(n) >= 2),
                        key=lambda n: (not any(c.isdigit() for c in n), -len(n)))[:3]
        end = min(len(self.joined), cursor + FORWARD_WINDOW)
        for needle in ranked:
            at = find_at_boundary(self.joined, needle, cursor, end)
            if at >= 0:
                return at
        if self.scanned > self.budget:
            return None
        for needle in ranked:
            at = find_at_boundary(self.joined, needle, 0)
            self.scanned += len(self.joined)
            if at >= 0:
                return at
        return None


def locate_items(data: Any, text: ChunkText) -> dict[str, list[int | None]]:
    """For every item array, the part each item is printed on (None where it is not found)."""
    located: dict[str, list[int | None]] = {}
    for pointer, items in item_arrays(data):
        cursor, parts = 0, list[int | None]()
        for item in items:
            at = text.locate(item, cursor)
            if at is None:
                parts.append(None)
            else:
                cursor = at
                parts.append(text.part_at(at))
        located[pointer] = parts
    return located


def _item_of(path: str, pointer: str) -> int | None:
    if path.startswith(pointer + "/"):
        index = path[len(pointer) + 1:].split("/", 1)[0]
        if index.isdigit():
            return int(index)
    return None


def _last_of(parts: list[int | None], upto: int) -> int | None:
    """The part of the last item at or before ``upto`` that was found on the pages."""
    return next((parts[i] for i in range(min(upto, len(parts) - 1), -1, -1)
                 if parts[i] is not None), None)


def resume_part(answer: Answer, located: dict[str, list[int | None]], cited: bool) -> int:
    """The part a cut answer's continuation starts from: where its last *settled* item is
    printed, so that nothing after it is lost and little before it is read again.

    Without citations every complete item is settled. With citations an item is settled once
    its sources are in: sources follow the answer's order, so the item of the last complete
    source may have lost some (it is read again), the items after it have none, and a cut
    before ``sources`` began settles nothing. 0 (start over) when nothing is settled or the
    settled items cannot be found on the pages."""
    arrays = [(p, items) for p, items in item_arrays(answer.data) if items]
    if not arrays:
        return 0
    if cited and answer.sources is None:
        return 0
    last_source = answer.sources[-1]["path"] if cited and answer.sources else None
    open_array = next((i for i, (p, _) in enumerate(arrays)
                       if last_source is not None and _item_of(last_source, p) is not None), None)
    resume: int | None = None
    for i, (pointer, items) in enumerate(arrays):
        parts = located.get(pointer, [])
        if not cited:
            found = _last_of(parts, len(items) - 1)
        elif open_array is None or i > open_array:
            return 0  # no item of this array has its sources
        elif i < open_array:
            continue  # sourced to its end before the cut
        else:
            assert last_source is not None
            found = _last_of(parts, _item_of(last_source, pointer) or 0)
        if found is None:
            return 0
        resume = found if resume is None else min(resume, found)
    return resume or 0


def covered_tokens(part_tokens: Sequence[int], resume: int) -> int:
    """Page tokens a cut answer has read out: the parts before the resume part, and half of it."""
    return max(1, sum(part_tokens[:resume]) + part_tokens[resume] // 2)
