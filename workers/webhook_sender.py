"""Posts webhook events: no redirects, a timeout, and a connection only to addresses that pass
the check made when the socket connects (``service.core.outbound``)."""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass

import httpcore

from service.core.outbound import GuardedBackend, TargetRefused, parse_url


@dataclass
class SendOutcome:
    status_code: int | None
    error: str | None
    duration_ms: int
    retry: bool = True  # False: this delivery can never be attempted (a malformed URL)
    # Without an answer: "blocked" (the address check refused it), "timeout" or "unreachable".
    failure: str | None = None


class WebhookSender:
    def __init__(self, allowed: list[str], timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.pool = httpcore.ConnectionPool(
            ssl_context=ssl.create_default_context(), network_backend=GuardedBackend(allowed),
            max_connections=50)

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
        timeout = {"connect": self.timeout_s, "read": self.timeout_s,
                   "write": self.timeout_s, "pool": self.timeout_s}
        try:
            response = self.pool.request("POST", target.url, headers=list(headers.items()),
                                         content=body.encode(), extensions={"timeout": timeout})
            return outcome(response.status, None)
        except TargetRefused as exc:
            return outcome(None, f"refused: {exc.message}", failure="blocked")
        except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError,
                httpcore.UnsupportedProtocol, OSError) as exc:
            failure = "timeout" if isinstance(exc, httpcore.TimeoutException) else "unreachable"
            return outcome(None, f"{type(exc).__name__}: {exc}"[:500], failure=failure)
        except Exception as exc:  # noqa: BLE001 - recorded as a failed attempt, never a loop
            return outcome(None, f"cannot be attempted: {type(exc).__name__}", retry=False,
                           failure="unreachable")
