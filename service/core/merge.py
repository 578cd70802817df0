"""Schema-aware, deterministic merge of the answers of a job's chunks (in page order).

Objects merge field by field; scalars take the first non-null value, differing non-null scalars
are reported as conflicts. Arrays are concatenated in page order, and an item seen twice is kept
once: where two answers meet (a page both read, as a continuation re-reads the page it starts
on, or the two sides of a chunk boundary, where an item printed across it may be read by both)
an item of the later answer that matches one of the earlier answer's items there is dropped,
its missing values filling the kept one's, and the merge says so in a warning. Items elsewhere
are never compared: a document may list the same thing twice. Items match when every value both
give is the same (text compared case- and space-insensitively, numbers by value) — or, for items
whose page is not known, when they are equal.

Sources follow their values: each answer's sources point into that answer, and are re-pointed
to where its items landed (a dropped duplicate's sources go to the item kept for it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas.strict import resolve_ref
from service.core.citations import escape, normalise

Location = tuple[int, int]  # (document position, page)


@dataclass
class ChunkAnswer:
    """One chunk's answer with what the merge needs to know of it."""

    data: Any
    sources: list[dict[str, Any]] | None = None
    # Per item array (pointer), the page each item is printed on (None: not found).
    located: dict[str, list[Location | None]] = field(default_factory=dict)
    pages: frozenset[Location] = frozenset()  # the pages the chunk read
    first: Location | None = None
    last: Location | None = None


@dataclass
class Conflict:
    path: str
    values: list[Any]
    chosen: Any

    def as_json(self) -> dict[str, Any]:
        return {"type": "conflict", "path": self.path or "/", "values": self.values,
                "chosen": self.chosen}


@dataclass
class Duplicate:
    path: str  # where the item that was kept is, in the merged data

    def as_json(self) -> dict[str, Any]:
        return {"type": "duplicate", "path": self.path,
                "message": "two calls read the same item (a page both read, or one printed "
                           "across their boundary): kept once"}


@dataclass
class Candidate:
    """A source as an answer gave it, and the value that answer gave for its path."""

    source: dict[str, Any]
    value: Any


@dataclass
class MergeOutcome:
    data: Any
    conflicts: list[Conflict] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)
    # By pointer into ``data``: the sources given for that value (None: no answer had sources).
    sources: dict[str, list[Candidate]] | None = None


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def same_value(a: Any, b: Any) -> bool:
    """Scalars that say the same thing: text alike once normalised, numbers of equal value."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return float(a) == float(b)
    if isinstance(a, str) and isinstance(b, str):
        return a == b or normalise(a) == normalise(b)
    return _canonical(a) == _canonical(b)


def _compatible(a: Any, b: Any) -> tuple[bool, int]:
    """Whether two items never disagree, and how many values they share."""
    if a is None or b is None:
        return True, 0
    if isinstance(a, dict) and isinstance(b, dict):
        shared = 0
        for key in set(a) | set(b):
            ok, n = _compatible(a.get(key), b.get(key))
            if not ok:
                return False, 0
            shared += n
        return True, shared
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return _canonical(a) == _canonical(b), 1
        shared = 0
        for x, y in zip(a, b, strict=True):
            ok, n = _compatible(x, y)
            if not ok:
                return False, 0
            shared += n
        return True, shared
    return same_value(a, b), 1


def _fill_missing(kept: Any, other: Any) -> Any:
    if kept is None:
        return other
    if isinstance(kept, dict) and isinstance(other, dict):
        return {**{k: v for k, v in other.items() if k not in kept},
                **{k: _fill_missing(v, other.get(k)) for k, v in kept.items()}}
    return kept


@dataclass
class _Item:
    value: Any
    answer: int
    location: Location | None


class _Merger:
    def __init__(self, answers: Sequence[ChunkAnswer], schema: dict[str, Any]) -> None:
        self.answers, self.root = answers, schema
        self.conflicts: list[Conflict] = []
        self.duplicates: list[Duplicate] = []
        # (answer, pointer in that answer) -> pointer in the merged data, for array items.
        self.moved: dict[tuple[int, str], str] = {}

    def merge(self, values: list[tuple[int, Any, str]], schema: Any, path: str) -> Any:
        node = resolve_ref(schema, self.root)
        node = node if isinstance(node, dict) else {}
        present = [(k, v, old) for k, v, old in values if v is not None]
        if not present:
            return None
        if all(isinstance(v, dict) for _, v, _ in present):
            props = node.get("properties", {})
            keys: list[str] = list(props)
            for _, v, _ in present:
                keys.extend(k for k in v if k not in keys)
            return {key: self.merge([(k, v.get(key), f"{old}/{escape(key)}")
                                     for k, v, old in present],
                                    props.get(key, {}), f"{path}/{escape(key)}")
                    for key in keys}
        if all(isinstance(v, list) for _, v, _ in present):
            return self.concatenate(present, path)
        first = present[0][1]
        distinct: list[Any] = []
        for _, v, _ in present:
            if not any(_canonical(v) == _canonical(d) for d in distinct):
                distinct.append(v)
        if len(distinct) > 1:
            self.conflicts.append(Conflict(path, distinct, first))
        return first

    def concatenate(self, groups: list[tuple[int, Any, str]], path: str) -> list[Any]:
        merged: list[_Item] = []
        by_page: dict[Location, list[int]] = {}
        exact: dict[tuple[int, str], list[int]] = {}  # (answer, canonical item) -> indices
        previous: int | None = None
        for k, items, old in groups:
            located = self.answers[k].located.get(old, [])
            taken: set[int] = set()
            for j, value in enumerate(items):
                location = located[j] if j < len(located) else None
                key = _canonical(value)
                match = self._match(merged, by_page, exact, taken, previous, k, value, key,
                                    location)
                if match is not None:
                    taken.add(match)
                    merged[match].value = _fill_missing(merged[match].value, value)
                    self.moved[(k, f"{old}/{j}")] = f"{path}/{match}"
                    self.duplicates.append(Duplicate(f"{path}/{match}"))
                    continue
                self.moved[(k, f"{old}/{j}")] = f"{path}/{len(merged)}"
                if location is not None:
                    by_page.setdefault(location, []).append(len(merged))
                exact.setdefault((k, key), []).append(len(merged))
                merged.append(_Item(value, k, location))
            if items:
                previous = k
        return [item.value for item in merged]

    def _match(self, merged: list[_Item], by_page: dict[Location, list[int]],
               exact: dict[tuple[int, str], list[int]], taken: set[int], previous: int | None,
               k: int, value: Any, key: str, location: Location | None) -> int | None:
        """The earlier item (not matched yet by this answer) that ``value`` repeats: one printed
        on the same page (another answer read that page too: a continuation re-reads the page it
        starts on, and the items after the last settled one), or on the last page of the answer
        before when the two pages follow each other (an item printed across the page break). An
        item whose page is unknown repeats an equal item of the answer before it."""
        if previous is None:
            return None
        if location is None:
            return next((i for i in exact.get((previous, key), []) if i not in taken), None)
        candidates = by_page.get(location, [])
        last = self.answers[previous].last
        if location == self.answers[k].first and last is not None \
                and last[0] == location[0] and last[1] + 1 == location[1]:
            candidates = candidates + [i for i in by_page.get(last, [])
                                       if merged[i].answer == previous]
        for i in candidates:
            if i in taken:
                continue
            earlier = merged[i]
            if earlier.answer == k or earlier.location is None:
                continue  # an answer's own items are never its duplicates
            ok, shared = _compatible(earlier.value, value)
            if ok and shared:
                return i
        return None

    def translate(self, k: int, pointer: str) -> str:
        """Where a pointer of answer ``k`` landed in the merged data."""
        tokens = pointer.split("/")
        for cut in range(len(tokens), 0, -1):
            prefix = "/".join(tokens[:cut])
            landed = self.moved.get((k, prefix))
            if landed is not None:
                return landed + pointer[len(prefix):]
        return pointer


def value_at(data: Any, pointer: str) -> tuple[bool, Any]:
    """(found, value) at an RFC 6901 pointer."""
    if pointer in ("", "/"):
        return True, data
    node = data
    for raw in pointer[1:].split("/"):
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return False, None
    return True, node


def merge_answers(answers: Sequence[ChunkAnswer | Any], schema: dict[str, Any]) -> MergeOutcome:
    """Merges the answers of a job's chunks, given in page order."""
    chunks = [a if isinstance(a, ChunkAnswer) else ChunkAnswer(a) for a in answers]
    merger = _Merger(chunks, schema)
    # One answer is the result as it is (nothing to merge, nothing moves).
    data = chunks[0].data if len(chunks) == 1 else merger.merge(
        [(k, c.data, "") for k, c in enumerate(chunks)], schema, "")
    outcome = MergeOutcome(data, merger.conflicts, merger.duplicates)
    if any(c.sources is not None for c in chunks):
        sources: dict[str, list[Candidate]] = {}
        for k, chunk in enumerate(chunks):
            for source in chunk.sources or []:
                found, value = value_at(chunk.data, source["path"])
                if not found:
                    continue  # a source for a value the answer does not hold
                sources.setdefault(merger.translate(k, source["path"]), []).append(
                    Candidate(source, value))
        outcome.sources = sources
    return outcome


def supported_sources(data: Any, candidates: dict[str, list[Candidate]]
                      ) -> dict[str, list[dict[str, Any]]]:
    """The sources of each value of the final ``data``: those given with that same value (a
    conflict's losing values, or values removed, lose theirs), each (document, page, quote) once."""
    out: dict[str, list[dict[str, Any]]] = {}
    for pointer, entries in candidates.items():
        found, value = value_at(data, pointer)
        if not found:
            continue
        seen: set[tuple[Any, Any, Any]] = set()
        for entry in entries:
            if isinstance(value, dict | list) or same_value(entry.value, value):
                key = (entry.source.get("document"), entry.source.get("page"),
                       entry.source.get("quote"))
                if key not in seen:
                    seen.add(key)
                    out.setdefault(pointer, []).append(entry.source)
    return out


def apply_choices(data: Any, choices: dict[str, Any]) -> Any:
    """Sets the values a resolver chose, by JSON-pointer-like path ("/a/b")."""
    for path, value in choices.items():
        parts = [p for p in path.split("/") if p]
        if not parts:
            continue
        target = data
        for part in parts[:-1]:
            target = target.get(part) if isinstance(target, dict) else None
            if target is None:
                break
        if isinstance(target, dict):
            target[parts[-1]] = value
    return data
