"""How ``longdoc extract`` shows a job's progress on stderr: live bars on a terminal (rich), plain
lines everywhere else (a pipe, a file, CI), so logs stay greppable and free of control codes."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Protocol

from rich.console import Console
from rich.filesize import decimal
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from schemas.api import JobEventOut, JobEventType

PLAIN_INTERVAL_S = 0.5  # at most two lines a second per bar, and always the last one


def usage_text(data: dict[str, Any]) -> str:
    usage = data.get("usage") or {}
    return (f"{usage.get('prompt_tokens', 0):,} tokens in, {usage.get('completion_tokens', 0):,} "
            f"out, ${data.get('cost_usd', 0.0):.6f}")


def display_name(name: str) -> str:
    return name if "://" in name else os.path.basename(name)


class CountColumn(ProgressColumn):
    """``7/14`` chunks or pages; a percentage for bytes (the note says how many)."""

    def render(self, task: Task) -> Text:
        if task.fields.get("bytes"):
            return Text(f"{task.percentage:>3.0f}%", style="progress.percentage")
        total = "?" if task.total is None else f"{int(task.total)}"
        return Text(f"{int(task.completed)}/{total}", style="progress.download")


class ProgressView(Protocol):
    def upload(self, name: str, sent: int, total: int) -> None: ...

    def event(self, event: JobEventOut) -> None: ...

    def message(self, text: str) -> None: ...

    def close(self) -> None: ...


class LiveProgress:
    """Bars for each upload (bytes), each document's ingestion (pages) and the job's chunks,
    with tokens and cost so far."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bars = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                             CountColumn(), TextColumn("{task.fields[note]}"),
                             TimeElapsedColumn(), console=console)
        self.uploads: dict[str, TaskID] = {}
        self.documents: dict[str, TaskID] = {}
        self.chunks: TaskID | None = None
        self.bars.start()
        self.closed = False

    def upload(self, name: str, sent: int, total: int) -> None:
        if name not in self.uploads:
            self.uploads[name] = self.bars.add_task(f"upload {display_name(name)}", total=total,
                                                    note="", bytes=True)
        self.bars.update(self.uploads[name], completed=sent, total=total,
                         note=f"{decimal(sent)} of {decimal(total)}")

    def event(self, event: JobEventOut) -> None:
        data = event.data
        if event.type == JobEventType.DOCUMENT:
            doc = data["document_id"]
            if doc not in self.documents:
                self.documents[doc] = self.bars.add_task(f"ingest {doc}", total=None, note="")
            self.bars.update(self.documents[doc], total=data.get("pages"),
                             completed=data.get("pages_parsed") or 0, note=data["status"])
        elif event.type == JobEventType.PROGRESS:
            if self.chunks is None:
                self.chunks = self.bars.add_task("chunks", total=None, note="")
            self.bars.update(self.chunks, total=data["chunks_total"] or None,
                             completed=data["chunks_done"], note=usage_text(data))
        elif event.type == JobEventType.STATUS:
            self.bars.console.print(f"job {event.job_id}: {data['status']}")

    def message(self, text: str) -> None:
        self.bars.console.print(text)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.bars.stop()


class PlainProgress:
    """One line per change, throttled: ``chunks 3/12, 1,234 tokens in, 56 out, $0.000123``."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.last: dict[str, float] = {}
        self.finished: set[str] = set()

    def _line(self, key: str, text: str, final: bool) -> None:
        now = time.monotonic()
        if final or now - self.last.get(key, 0.0) >= PLAIN_INTERVAL_S:
            self.last[key] = now
            print(text, file=self.stream, flush=True)

    def upload(self, name: str, sent: int, total: int) -> None:
        key = f"upload {name}"
        if key in self.finished:
            return
        if sent >= total:
            self.finished.add(key)
        self._line(key, f"upload {display_name(name)}: {sent:,}/{total:,} bytes", sent >= total)

    def event(self, event: JobEventOut) -> None:
        data = event.data
        if event.type == JobEventType.DOCUMENT:
            pages = f"{data.get('pages_parsed') or 0}/{data['pages']}" if data.get("pages") else "?"
            self._line(f"doc {data['document_id']}",
                       f"document {data['document_id']}: {data['status']}, pages {pages}",
                       data["status"] != "processing")
        elif event.type == JobEventType.PROGRESS:
            done, total = data["chunks_done"], data["chunks_total"]
            self._line("chunks", f"chunks {done}/{total}, {usage_text(data)}", done == total)
        elif event.type == JobEventType.STATUS:
            self._line("status", f"job {event.job_id}: {data['status']}", True)

    def message(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        pass


def progress_view(console: Console) -> ProgressView:
    # rich treats FORCE_COLOR as a terminal even when stderr is a pipe: ask the stream itself.
    if console.is_interactive and sys.stderr.isatty():
        return LiveProgress(console)
    return PlainProgress()
