"""The extracted pages of a document, stored once by ingestion and read by every later step."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from service.planner import PageInfo
from service.storage import LocalStorage


@dataclass
class ExtractedPage:
    kind: str  # "text" | "image" | "empty"
    text: str = ""
    text_tokens: int = 0
    image: str | None = None  # storage key of a JPEG/PNG the model accepts
    image_media_type: str | None = None
    width: int = 0
    height: int = 0
    image_bytes: int = 0


def index_row(page: ExtractedPage) -> list[Any]:
    return [page.kind, page.text_tokens, page.width, page.height, page.image_bytes]


def info_from_row(row: list[Any]) -> PageInfo:
    return PageInfo(*row)


def save_pages(storage: LocalStorage, pages: list[ExtractedPage]) -> str:
    return storage.put_bytes(json.dumps([asdict(p) for p in pages]).encode())


def load_pages(storage: LocalStorage, key: str) -> list[ExtractedPage]:
    with storage.open(key) as fh:
        return [ExtractedPage(**raw) for raw in json.load(fh)]
