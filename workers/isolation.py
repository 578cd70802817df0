"""Runs untrusted parsing in a forked child with CPU-time and memory limits.

A parser that crashes, loops or exhausts memory takes down only the child; the caller gets a
``ParseError``. Forking (not spawning) lets the child inherit the loaded tokenizer, and PDFium is
only ever touched in the child's single thread.
"""

from __future__ import annotations

import faulthandler
import json
import os
import resource
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workers.parsing import ParseError

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
WATCH_INTERVAL_S = 0.01


def _child(fn: Callable[[], Any], write_fd: int, cpu_s: int, memory: int) -> None:
    faulthandler.disable()  # a parser crash is an outcome here, not a trace to print
    try:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        try:
            out = {"ok": True, "value": fn()}
        except ParseError as exc:
            out = {"ok": False, "code": exc.code, "message": exc.message}
        except MemoryError:
            out = {"ok": False, "code": "document_unreadable",
                   "message": "parsing the file exceeded the memory limit"}
        except RecursionError:
            out = {"ok": False, "code": "document_unreadable",
                   "message": "the file is nested too deeply to parse"}
        except Exception as exc:  # noqa: BLE001 - anything else is a file we cannot read
            out = {"ok": False, "code": "document_unreadable",
                   "message": f"the file cannot be parsed ({type(exc).__name__})"}
        data = json.dumps(out).encode()
        view = memoryview(data)
        while view:
            written = os.write(write_fd, view)
            view = view[written:]
    finally:
        os._exit(0)


def _family(pid: int) -> list[int]:
    """The process and its helpers (``fork_map``)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            helpers = [int(p) for p in fh.read().split()]
    except (OSError, ValueError):
        helpers = []
    return [pid, *(p for helper in helpers for p in _family(helper))]


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return 0


def _private_bytes(pid: int) -> int:
    """Memory the process owns alone: what parsing allocated, not the pages shared with the
    worker it was forked from (those count in RSS but cost the machine nothing more)."""
    total = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    total += int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return 0
    return total


class PageProgress:
    """Pages parsed, reported from the child (and its ``fork_map`` helpers) through a pipe.

    The child writes one short line per message (atomic below PIPE_BUF, so helpers never
    interleave); the parent counts them and calls ``on_update(parsed, total)`` at most every
    ``every_s`` seconds or ``every_pages`` pages. The parent trusts nothing it reads: a child
    taken over by a hostile file can only make the count wrong, never reach the caller with
    anything else.
    """

    def __init__(self, on_update: Callable[[int, int | None], None], every_s: float = 0.5,
                 every_pages: int = 50) -> None:
        self.on_update, self.every_s, self.every_pages = on_update, every_s, every_pages
        self.read_fd, self.write_fd = os.pipe()
        self.parsed = 0
        self.total: int | None = None
        self._buffer = b""
        self._reported, self._reported_at = 0, time.monotonic()

    # The child's side
    def set_total(self, pages: int) -> None:
        os.write(self.write_fd, b"T%d\n" % pages)

    def page_done(self) -> None:
        os.write(self.write_fd, b"P\n")

    # The parent's side
    def feed(self, data: bytes) -> None:
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        self._buffer = self._buffer[-64:]
        for line in lines:
            if line == b"P":
                self.parsed += 1
            elif line[:1] == b"T" and line[1:].isdigit() and len(line) < 12:
                self.total = int(line[1:])
        if self.total is not None:
            self.parsed = min(self.parsed, self.total)
        now = time.monotonic()
        if (self.parsed - self._reported >= self.every_pages
                or (self.parsed != self._reported and now - self._reported_at >= self.every_s)):
            self._reported, self._reported_at = self.parsed, now
            self.on_update(self.parsed, self.total)


@dataclass
class ChildUsage:
    peak_private_bytes: int = 0  # the largest process of the parse, its own memory
    peak_rss_bytes: int = 0  # the same, with the pages shared with the worker
    cpu_s: float = 0.0


def run_isolated(fn: Callable[[], Any], *, cpu_s: int, memory_bytes: int, wall_s: float,
                 usage: ChildUsage | None = None, progress: PageProgress | None = None) -> Any:
    """Runs ``fn`` in a forked child and returns its JSON-able result.

    Memory is held to ``memory_bytes`` of private memory per process, watched every few
    milliseconds (the kernel does not enforce RLIMIT_RSS); an address-space limit is the hard
    stop for allocations faster than the watch. ``fn`` may report through ``progress``.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read_fd)
        if progress is not None:
            os.close(progress.read_fd)
        _child(fn, write_fd, cpu_s, _address_space_limit(memory_bytes))
    os.close(write_fd)
    watched = [read_fd]
    if progress is not None:
        os.close(progress.write_fd)
        watched.append(progress.read_fd)
    chunks: list[bytes] = []
    deadline = time.monotonic() + wall_s
    killed_for: str | None = None
    peak_private = peak_rss = 0
    ticks = 0
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                killed_for = "time"
                break
            ticks += 1
            for member in _family(pid):
                rss = _rss_bytes(member)
                peak_rss = max(peak_rss, rss)
                # RSS bounds private memory from above; read the costlier figure only when it
                # could matter, and now and then for the record.
                if rss > memory_bytes or ticks % 10 == 0:
                    private = _private_bytes(member)
                    peak_private = max(peak_private, private)
                    if private > memory_bytes:
                        killed_for = "memory"
            if killed_for:
                break
            ready, _, _ = select.select(watched, [], [], min(remaining, WATCH_INTERVAL_S))
            if progress is not None and progress.read_fd in ready:
                data = os.read(progress.read_fd, 1 << 16)
                if data:
                    progress.feed(data)
                else:
                    watched.remove(progress.read_fd)
            if read_fd in ready:
                chunk = os.read(read_fd, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        os.close(read_fd)
        if progress is not None:
            os.close(progress.read_fd)
        if killed_for:
            os.kill(pid, signal.SIGKILL)
        _, status, rusage = os.wait4(pid, 0)
    if usage is not None:
        usage.peak_private_bytes = peak_private
        usage.peak_rss_bytes = max(peak_rss, rusage.ru_maxrss * 1024)
        usage.cpu_s = rusage.ru_utime + rusage.ru_stime
    if killed_for == "time":
        raise ParseError("document_unreadable", f"parsing took longer than {wall_s:.0f} s")
    if killed_for == "memory":
        raise ParseError("document_unreadable",
                         f"parsing needed more than {memory_bytes >> 20} MB of memory")
    if not chunks:
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) in (signal.SIGXCPU, signal.SIGKILL):
            raise ParseError("document_unreadable",
                             f"parsing exceeded the CPU limit of {cpu_s} s")
        raise ParseError("document_unreadable",
                         "the parser crashed on this file (exit status "
                         f"{os.waitstatus_to_exitcode(status)}), most likely at its memory limit")
    result = json.loads(b"".join(chunks))
    if not result["ok"]:
        raise ParseError(result["code"], result["message"])
    return result["value"]


def _address_space_limit(memory_bytes: int) -> int:
    try:
        with open("/proc/self/statm") as fh:
            current = int(fh.read().split()[0]) * PAGE_SIZE
    except (OSError, ValueError, IndexError):
        current = 0
    return current + 3 * memory_bytes


def fork_map(tasks: list[Callable[[], Any]]) -> Callable[[], list[Any]]:
    """Starts each task in a forked child now; the returned function collects their results.

    The caller does its own share of the work in between. A child that dies without an answer
    fails the whole parse.
    """
    children = []
    for task in tasks:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.close(read_fd)
            faulthandler.disable()
            try:
                data = json.dumps(task()).encode()
                view = memoryview(data)
                while view:
                    view = view[os.write(write_fd, view):]
            finally:
                os._exit(0)
        os.close(write_fd)
        children.append((pid, read_fd))

    def collect() -> list[Any]:
        results = []
        for pid, read_fd in children:
            chunks = []
            while chunk := os.read(read_fd, 1 << 20):
                chunks.append(chunk)
            os.close(read_fd)
            os.waitpid(pid, 0)
            if not chunks:
                raise ParseError("document_unreadable", "a parser process died on this file")
            results.append(json.loads(b"".join(chunks)))
        return results

    return collect
