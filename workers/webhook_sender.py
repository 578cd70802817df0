"""Posts webhook events: no redirects, a connection only to addresses that pass the check made
when the socket connects (``service.core.outbound``), and a hard deadline on the whole attempt.

A receiver is a stranger's server: it may trickle its answer a byte at a time or send gigabytes.
Per-read timeouts do not bound either, so a watchdog shuts the attempt's socket down when
``LONGDOC_WEBHOOK_TIMEOUT_S`` has passed, and at most ``MAX_RESPONSE_BYTES`` of the answer are
read (only its status matters)."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpcore

from service.core.outbound import GuardedBackend, TargetRefused, parse_url

MAX_RESPONSE_BYTES = 4096


@dataclass
class SendOutcome:
    status_code: int | None
    error: str | None
    duration_ms: int
    retry: bool = True  # False: this delivery can never be attempted (a malformed URL)
    # Without an answer: "blocked" (the address check refused it), "timeout" or "unreachable".
    failure: str | None = None


class _AttemptBackend(GuardedBackend):
    """The guarded backend of one attempt: it remembers its sockets so a watchdog can cut them."""

    def __init__(self, allowed: list[str]) -> None:
        super().__init__(allowed)
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.aborted = False

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        stream = super().connect_tcp(host, port, timeout, local_address, socket_options)
        with self.lock:
            self.sockets.append(stream.get_extra_info("socket"))
            if self.aborted:
                self._shutdown()
        return stream

    def abort(self) -> None:
        with self.lock:
            self.aborted = True
            self._shutdown()

    def _shutdown(self) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):  # already closed
                sock.shutdown(socket.SHUT_RDWR)


class WebhookSender:
    def __init__(self, allowed: list[str], timeout_s: float) -> None:
        self.allowed, self.timeout_s = allowed, timeout_s
        self.ssl_context = ssl.create_default_context()

    def send(self, url: str, headers: dict[str, str], body: str) -> SendOutcome:
        started = time.monotonic()

        def outcome(code: int | None, error: str | None, retry: bool = True,
                    failure: str | None = None) -> SendOutcome:
            return SendOutcome(code, error, int((time.monotonic() - started) * 1000), retry,
                               failure)

        try:
            target = parse_url(url)
        except TargetRefused as exc:
            return outcome(None, f"refused: {exc.message}", retry=False, failure="blocked")
        backend = _AttemptBackend(self.allowed)
        watchdog = threading.Timer(self.timeout_s, backend.abort)
        watchdog.daemon = True
        timeout = {"connect": self.timeout_s, "read": self.timeout_s,
                   "write": self.timeout_s, "pool": self.timeout_s}
        pool = httpcore.ConnectionPool(ssl_context=self.ssl_context, network_backend=backend,
                                       max_connections=1)
        status: int | None = None
        watchdog.start()
        try:
            with pool.stream("POST", target.url, headers=list(headers.items()),
                             content=body.encode(), extensions={"timeout": timeout}) as response:
                status, read = response.status, 0
                for chunk in response.iter_stream():  # drained a little, never kept
                    read += len(chunk)
                    if read >= MAX_RESPONSE_BYTES:
                        break
                return outcome(status, None)
        except TargetRefused as exc:
            return outcome(None, f"refused: {exc.message}", failure="blocked")
        except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError,
                httpcore.UnsupportedProtocol, OSError) as exc:
            if status is not None:
                return outcome(status, None)  # it answered; the rest of its body does not matter
            if backend.aborted:
                return outcome(None, f"timed out after {self.timeout_s:.0f} s", failure="timeout")
            failure = "timeout" if isinstance(exc, httpcore.TimeoutException) else "unreachable"
            return outcome(None, f"{type(exc).__name__}: {exc}"[:500], failure=failure)
        except Exception as exc:  # noqa: BLE001 - recorded as a failed attempt, never a loop
            return outcome(None, f"cannot be attempted: {type(exc).__name__}", retry=False,
                           failure="unreachable")
        finally:
            watchdog.cancel()
            pool.close()
