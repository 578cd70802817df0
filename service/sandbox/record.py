"""``--record FILE``: every request to ``/v1/...`` and its response as JSON lines.

Meant for people as much as for tests: the exact body a schema became on the wire, and the
API's answer to it. Image data is elided (its length and hash are kept) and the API key is never
written.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_HEADERS = ("content-type", "content-length", "user-agent", "idempotency-key",
                   "x-stainless-retry-count")
RESPONSE_HEADERS = ("content-type", "retry-after", "retry-after-ms", "x-request-id", "x-opper-cost")


def _elide(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _elide(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_elide(v) for v in value]
    if isinstance(value, str) and value.startswith("data:") and len(value) > 256:
        head = value.split(",", 1)[0]
        digest = hashlib.sha256(value.encode()).hexdigest()[:16]
        return f"{head},<{len(value)} characters elided, sha256 {digest}>"
    return value


def _body(raw: bytes) -> Any:
    try:
        return _elide(json.loads(raw)) if raw else None
    except (ValueError, UnicodeDecodeError):
        return raw.decode("utf-8", "replace")[:10_000]


class Recorder:
    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.lock = threading.Lock()
        self.seq = 0

    def next_seq(self) -> int:
        with self.lock:
            self.seq += 1
            return self.seq

    def write(self, line: dict[str, Any]) -> None:
        text = json.dumps({"time": round(time.time(), 3), **line}, ensure_ascii=False)
        with self.lock, self.path.open("a", encoding="utf-8") as fh:
            fh.write(text + "\n")


class RecordMiddleware:
    """Pure ASGI, so the bodies are seen as they are sent (and a dropped answer as dropped)."""

    def __init__(self, app: ASGIApp, recorder: Any) -> None:
        self.app = app
        self.recorder = recorder  # a callable returning the current Recorder or None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        recorder: Recorder | None = self.recorder()
        if scope["type"] != "http" or recorder is None or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        seq = recorder.next_seq()
        request = bytearray()
        done = False

        async def receive_and_keep() -> Message:
            nonlocal done
            message = await receive()
            if message["type"] == "http.request":
                request.extend(message.get("body", b""))
                if not message.get("more_body") and not done:
                    done = True
                    recorder.write(self._request(seq, scope, bytes(request)))
            return message

        status, headers, response = 0, {}, bytearray()

        async def send_and_keep(message: Message) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = {k.decode().lower(): v.decode() for k, v in message.get("headers", [])}
            elif message["type"] == "http.response.body":
                response.extend(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive_and_keep, send_and_keep)
        except BaseException:
            recorder.write({"seq": seq, "direction": "response", "status": status,
                            "headers": self._kept(headers), "dropped": True,
                            "body": bytes(response).decode("utf-8", "replace")})
            raise
        if not done:
            recorder.write(self._request(seq, scope, bytes(request)))
        recorder.write({"seq": seq, "direction": "response", "status": status,
                        "headers": self._kept(headers), "body": _body(bytes(response))})

    @staticmethod
    def _kept(headers: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in headers.items()
                if k in RESPONSE_HEADERS or k.startswith("x-ratelimit-")}

    @staticmethod
    def _request(seq: int, scope: Scope, raw: bytes) -> dict[str, Any]:
        headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
        kept = {k: v for k, v in headers.items() if k in REQUEST_HEADERS}
        if "authorization" in headers:
            kept["authorization"] = "Bearer ***"  # that a key was sent, never the key
        return {"seq": seq, "direction": "request", "method": scope["method"],
                "path": scope["path"], "headers": kept, "body": _body(raw)}
