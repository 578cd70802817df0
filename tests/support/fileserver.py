"""A real HTTP server on a loopback address that serves files, redirects and slow bodies, and
counts every connection (uploads by URL are tested against it)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FileServer:
    def __init__(self, host: str = "127.0.0.1", routes: dict[str, bytes] | None = None,
                 redirects: dict[str, str] | None = None) -> None:
        self.routes, self.redirects = routes or {}, redirects or {}
        self.requests: list[str] = []
        self.accepted = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                server.requests.append(self.path)
                if self.path in server.redirects:
                    self.send_response(302)
                    self.send_header("Location", server.redirects[self.path])
                    self.end_headers()
                    return
                body = server.routes.get(self.path)
                if body is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        class CountingServer(ThreadingHTTPServer):

            def get_request(self) -> Any:
                server.accepted += 1
                return super().get_request()

        self.server = CountingServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def connections(self) -> int:
        return self.accepted

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
