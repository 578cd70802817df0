"""The page model: what ingestion extracts from a document, stored once and read by every later
step, and the compact index of it that the planner budgets with."""

from __future__ import annotations

import json
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


def save_pages(store: PageStore, pages: list[ExtractedPage]) -> str:
    return store.put_bytes(json.dumps([asdict(p) for p in pages]).encode())


def load_pages(store: PageStore, key: str) -> list[ExtractedPage]:
    with store.open(key) as fh:
        return [ExtractedPage(**raw) for raw in json.load(fh)]
