"""The oracle: what a perfect reader of the pages would answer, given as data.

``--oracle FILE`` holds JSON lines ``{"match": "<text>", "path": "/json/pointer", "value": <json>}``.
An entry belongs in an answer when its ``match`` occurs in the text of a page of the prompt; the
answer carries those entries in the order their matches occur, a ``path`` ending in ``/-``
appending to an array. Pages are the prompt's text parts that begin with a header line
``Document <d>, page <p>`` (optionally ``, part <k>`` or ``, image 1``), the wire format of
longdoc's prompts (RFC 6901 pointers; the header format is read, never imported).
"""

from __future__ import annotations

import bisect
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HEADER = re.compile(r"^Document (\d+), page (\d+)(?:, part \d+)?(?:, image \d+)?$", re.MULTILINE)


class OracleError(ValueError):
    """An oracle file the sandbox cannot use; the message names the line."""


@dataclass(frozen=True)
class OracleEntry:
    match: str
    pointer: str
    tokens: tuple[str, ...]
    value: Any
    line: int

    @property
    def appends(self) -> bool:
        return bool(self.tokens) and self.tokens[-1] == "-"


@dataclass(frozen=True)
class Page:
    document: int
    page: int
    text: str


@dataclass(frozen=True)
class Hit:
    entry: OracleEntry
    page: Page
    offset: int  # in the prompt's pages, joined: the order of the answer


def split_pointer(pointer: str) -> tuple[str, ...]:
    if pointer == "":
        return ()
    if not pointer.startswith("/"):
        raise ValueError(f"{pointer!r} is not a JSON Pointer (it must start with '/')")
    return tuple(t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/"))


def join_pointer(tokens: tuple[str | int, ...]) -> str:
    return "".join("/" + str(t).replace("~", "~0").replace("/", "~1") for t in tokens)


def load_oracle(path: str | Path) -> list[OracleEntry]:
    entries = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            raw = json.loads(line)
            match, pointer, value = raw["match"], raw["path"], raw["value"]
            tokens = split_pointer(pointer)
        except (ValueError, KeyError, TypeError) as exc:
            raise OracleError(f"{where}: expected {{\"match\", \"path\", \"value\"}} ({exc})") from None
        if not isinstance(match, str) or not match:
            raise OracleError(f"{where}: 'match' must be a non-empty string")
        if "-" in tokens[:-1]:
            raise OracleError(f"{where}: '-' may only end a path")
        entries.append(OracleEntry(match, pointer, tokens, value, number))
    return entries


def _pages_of_text(text: str, pages: list[Page], current: list[Page]) -> None:
    headers = list(HEADER.finditer(text))
    lead = text[:headers[0].start()] if headers else text
    if lead and current:  # text that continues the page before it
        last = pages[-1]
        pages[-1] = current[0] = Page(last.document, last.page, last.text + lead)
    for i, header in enumerate(headers):
        end = headers[i + 1].start() if i + 1 < len(headers) else len(text)
        page = Page(int(header.group(1)), int(header.group(2)), text[header.end() + 1:end])
        pages.append(page)
        current[:] = [page]


def prompt_pages(messages: list[dict[str, Any]]) -> list[Page]:
    """The pages of the user messages, in prompt order (text after each header line)."""
    pages: list[Page] = []
    current: list[Page] = []
    for message in messages:
        if message.get("role") != "user":
            continue
        content = message.get("content")
        parts = [content] if isinstance(content, str) else [
            p.get("text", "") for p in content or [] if isinstance(p, dict) and p.get("type") == "text"]
        for text in parts:
            _pages_of_text(text, pages, current)
    return pages


def find_hits(entries: list[OracleEntry], pages: list[Page]) -> list[Hit]:
    """Every entry whose ``match`` occurs in a page, in the order of its first occurrence (the
    file's order between entries that match at the same place)."""
    if not pages or not entries:
        return []
    joined = "\x00".join(p.text for p in pages)
    starts, offset = [], 0
    for page in pages:
        starts.append(offset)
        offset += len(page.text) + 1
    hits = []
    for entry in entries:
        at = joined.find(entry.match)
        if at >= 0:
            hits.append(Hit(entry, pages[bisect.bisect_right(starts, at) - 1], at))
    hits.sort(key=lambda h: (h.offset, h.entry.line))
    return hits
