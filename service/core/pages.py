"""The page model: what ingestion extracts from a document, stored once and read by every later
step, and the compact index of it that the planner budgets with."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, BinaryIO, Protocol


class PageStore(Protocol):
    """Where page artifacts live (``service.store.storage`` implements it)."""

    def put_bytes(self, data: bytes) -> str: ...

    def open(self, key: str) -> BinaryIO: ...


class PageKind:
    TEXT = "text"
    IMAGE = "image"  # a scan or photo: the model reads the picture
    EMPTY = "empty"


@dataclass
class ExtractedPage:
    kind: str  # a PageKind
    text: str = ""
    text_tokens: int = 0
    image: str | None = None  # storage key of a JPEG/PNG the model accepts
    image_media_type: str | None = None
    width: int = 0
    height: int = 0
    image_bytes: int = 0


@dataclass(frozen=True)
class PageInfo:
    """What ingestion recorded of one page: enough to budget it without its text."""

    kind: str
    text_tokens: int = 0
    width: int = 0
    height: int = 0
    image_bytes: int = 0  # > 0 when a rendered image of the page is stored

    @property
    def has_image(self) -> bool:
        return self.kind == PageKind.IMAGE or self.image_bytes > 0

    def as_row(self) -> list[Any]:
        # Stored compactly as a list: a 5,000-page document's index stays small.
        return [self.kind, self.text_tokens, self.width, self.height, self.image_bytes]

    @classmethod
    def from_row(cls, row: list[Any]) -> PageInfo:
        return cls(*row)


def page_info(page: ExtractedPage) -> PageInfo:
    return PageInfo(page.kind, page.text_tokens, page.width, page.height, page.image_bytes)


def prompt_tokens(index: Sequence[list[Any]], image_cost: Callable[[int, int], int]) -> int:
    """What a document costs in a prompt: its text pages' tokens and, for pages the model reads
    as images, ``image_cost(width, height)`` (the profile's rule at the default detail). Page
    headers are left out: they depend on the document's place in a job."""
    total = 0
    for row in index:
        info = PageInfo.from_row(row)
        if info.kind == PageKind.IMAGE:
            total += image_cost(info.width, info.height)
        else:
            total += info.text_tokens
    return total


def split_tokens(tokens: int | None, index: Sequence[list[Any]] | None) -> tuple[int | None, int | None]:
    """(text, image) parts of a document's recorded ``tokens``: the text tokens are in its page
    index, the images are the rest (recorded at ingestion with the model profile of the time)."""
    if tokens is None or index is None:
        return None, None
    text = sum(PageInfo.from_row(row).text_tokens for row in index
               if PageInfo.from_row(row).kind != PageKind.IMAGE)
    return text, max(0, tokens - text)


def save_pages(store: PageStore, pages: list[ExtractedPage]) -> str:
    return store.put_bytes(json.dumps([asdict(p) for p in pages]).encode())


def load_pages(store: PageStore, key: str) -> list[ExtractedPage]:
    with store.open(key) as fh:
        return [ExtractedPage(**raw) for raw in json.load(fh)]
