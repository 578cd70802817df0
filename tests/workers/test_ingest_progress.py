"""Ingestion reports pages parsed while it parses, from the isolated child and its helpers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from service.core.tokens import get_encoding
from service.store.storage import LocalStorage
from tests.support.pdfgen import text_pdf
from workers.isolation import PageProgress, run_isolated
from workers.parsing import PdfOptions, parse_document

LIMITS: dict[str, Any] = {"cpu_s": 60, "memory_bytes": 1536 * 1024 * 1024, "wall_s": 120}


def test_a_long_pdf_reports_its_pages_as_they_are_parsed(tmp_path: Path) -> None:
    get_encoding()
    storage = LocalStorage(tmp_path / "store")
    path = tmp_path / "long.pdf"
    path.write_bytes(text_pdf(400, lines=10))  # 400 pages: parsed by two processes
    updates: list[tuple[int, int | None]] = []
    progress = PageProgress(lambda parsed, total: updates.append((parsed, total)),
                            every_s=3600, every_pages=50)

    def work() -> int:
        return len(parse_document(str(path), "application/pdf", storage,
                                  PdfOptions(None, 5000, progress=progress)))

    assert run_isolated(work, progress=progress, **LIMITS) == 400
    parsed = [p for p, _ in updates]
    # One update per read of the pipe (at least 50 pages apart): how many depends on speed.
    assert updates and parsed == sorted(set(parsed)) and parsed[0] >= 50 and parsed[-1] <= 400
    assert all(total == 400 for _, total in updates)


def test_a_child_writing_nonsense_to_the_progress_pipe_changes_only_the_count(tmp_path: Path) -> None:
    updates: list[tuple[int, int | None]] = []
    progress = PageProgress(lambda parsed, total: updates.append((parsed, total)),
                            every_s=0, every_pages=1)

    def hostile() -> str:
        os.write(progress.write_fd, b"T12345678901234567890\nrm -rf /\n" + b"\xff" * 5000 + b"\nP\n")
        progress.set_total(3)
        for _ in range(10):
            progress.page_done()
        return "done"

    assert run_isolated(hostile, progress=progress, **LIMITS) == "done"
    assert updates[-1] == (3, 3)  # capped at the total it said, the rest ignored
