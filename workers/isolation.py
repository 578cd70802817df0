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
from typing import Any

from workers.parsing import ParseError


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


def run_isolated(fn: Callable[[], Any], *, cpu_s: int, memory_bytes: int, wall_s: float) -> Any:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read_fd)
        _child(fn, write_fd, cpu_s, memory_bytes)
    os.close(write_fd)
    chunks: list[bytes] = []
    deadline = time.monotonic() + wall_s
    timed_out = False
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([read_fd], [], [], min(remaining, 1.0))
            if ready:
                chunk = os.read(read_fd, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        os.close(read_fd)
        if timed_out:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    if timed_out:
        raise ParseError("document_unreadable", f"parsing took longer than {wall_s:.0f} s")
    if not chunks:
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) in (signal.SIGXCPU, signal.SIGKILL):
            raise ParseError("document_unreadable",
                             f"parsing exceeded the CPU limit of {cpu_s} s")
        raise ParseError("document_unreadable",
                         "the parser crashed on this file (exit status "
                         f"{os.waitstatus_to_exitcode(status)})")
    result = json.loads(b"".join(chunks))
    if not result["ok"]:
        raise ParseError(result["code"], result["message"])
    return result["value"]
