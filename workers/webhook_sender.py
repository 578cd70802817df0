"""Posts webhook events: no redirects, and a connection only to addresses that pass the check
made when the socket connects (DNS rebinding cannot slip a private address in)."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpcore

from service.core.webhooks import WebhookTargetRefused, resolve_checked


class GuardedBackend(httpcore.SyncBackend):
    def __init__(self, allowed: list[str]) -> None:
        self.allowed = allowed

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        address = resolve_checked(host, port, self.allowed)
        return super().connect_tcp(address, port, timeout, local_address, socket_options)


@dataclass
class SendOutcome:
    status_code: int | None
    error: str | None
    duration_ms: int


class WebhookSender:
    """Posts events; follows no redirects; a connection only to addresses that pass the check."""

    def __init__(self, allowed: list[str], timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.pool = httpcore.ConnectionPool(
            ssl_context=ssl.create_default_context(), network_backend=GuardedBackend(allowed),
            max_connections=50)

    def send(self, url: str, headers: dict[str, str], body: str) -> SendOutcome:
        started = time.monotonic()
        timeout = {"connect": self.timeout_s, "read": self.timeout_s,
                   "write": self.timeout_s, "pool": self.timeout_s}
        try:
            response = self.pool.request("POST", url, headers=list(headers.items()), content=body.encode(),
                                         extensions={"timeout": timeout})
            code, error = response.status, None
        except WebhookTargetRefused as exc:
            code, error = None, f"refused: {exc}"
        except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError,
                httpcore.UnsupportedProtocol, OSError) as exc:
            code, error = None, f"{type(exc).__name__}: {exc}"[:500]
        return SendOutcome(code, error, int((time.monotonic() - started) * 1000))
