"""A webhook receiver is chosen by the tenant: a hostile one answers 200 and then never ends its
body. The sender reads the whole response (``httpcore``'s ``request()``), with the webhook timeout
applying to each read, not to the attempt."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

from tests.adversarial.conftest import png
from tests.support.stack import start_stack, upload, wait_document, wait_job, wait_until

SCHEMA = {"type": "object", "required": ["title"], "properties": {"title": {"type": "string"}}}


class EndlessReceiver:
    """Answers every POST with 200 and a chunked body that never ends: a byte every second
    (``trickle``) or 1 MiB chunks as fast as they go, up to ``flood_mib`` (``flood``)."""

    def __init__(self, mode: str, flood_mib: int = 300) -> None:
        self.mode, self.flood_mib = mode, flood_mib
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        self.connections = 0
        self.running = True
        self.sock.settimeout(0.2)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            sent = 0
            while self.running:
                if self.mode == "trickle":
                    conn.sendall(b"1\r\nx\r\n")
                    time.sleep(1)
                elif sent < self.flood_mib:
                    conn.sendall(b"100000\r\n" + b"x" * (1 << 20) + b"\r\n")
                    sent += 1
                else:
                    time.sleep(0.5)  # keep the connection open, send nothing: a read timeout
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.running = False
        self.sock.close()


def rss_mib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    return 0


def test_a_receiver_that_never_ends_its_answer_cannot_hold_a_worker(tmp_path: Path) -> None:
    """FINDING (severe): with ``LONGDOC_WEBHOOK_TIMEOUT_S=3`` a delivery to a receiver that
    answers 200 and trickles its body never records an attempt: the model worker thread reads
    forever (each byte arrives within the read timeout). After the claim's lease (timeout + 30 s)
    the sweep finds the delivery due again and a second thread connects — one more stuck thread
    per lease, per hostile job, until the model worker's 64 threads (every tenant's model calls,
    finalizes and webhooks) are gone. Expected: an attempt bounded by the timeout as a whole,
    the body ignored (or read up to a few KB)."""
    s = start_stack(tmp_path, env_extra={"LONGDOC_WEBHOOK_TIMEOUT_S": "3"})
    receiver = EndlessReceiver("trickle")
    try:
        with s.client(s.create_key("mallory")["api_key"]) as client:
            doc = upload(client, "a.png", data=png(11)).json()
            wait_document(client, doc["id"])
            job_id = client.post("/v1/jobs", json={"document_ids": [doc["id"]], "schema": SCHEMA,
                                                   "webhook_url": receiver.url}).json()["id"]
            wait_job(client, job_id)

            def attempts() -> list[object]:
                deliveries = client.get(f"/v1/jobs/{job_id}/webhooks").json()["deliveries"]
                return list(deliveries[0]["attempts"]) if deliveries else []

            recorded = wait_until(attempts, 45, "an attempt recorded after the job ended "
                                  f"(timeout 3 s; the receiver saw {receiver.connections} connections)")
        assert recorded
    finally:
        receiver.close()
        s.stop()


def test_a_receiver_that_floods_its_answer_cannot_grow_the_worker(tmp_path: Path) -> None:
    """FINDING (severe): the whole response body is read into memory: a receiver answering
    with 300 MiB grows the model worker by about that much (every tenant's calls live in that
    process); more, or several hostile jobs at once, and it is killed for memory. Expected:
    the body discarded or capped at a few KB."""
    s = start_stack(tmp_path, env_extra={"LONGDOC_WEBHOOK_TIMEOUT_S": "3"})
    receiver = EndlessReceiver("flood", flood_mib=300)
    try:
        worker = s.procs["model"].pid
        before = rss_mib(worker)
        with s.client(s.create_key("mallory")["api_key"]) as client:
            doc = upload(client, "a.png", data=png(12)).json()
            wait_document(client, doc["id"])
            job_id = client.post("/v1/jobs", json={"document_ids": [doc["id"]], "schema": SCHEMA,
                                                   "webhook_url": receiver.url}).json()["id"]
            wait_job(client, job_id)
            wait_until(lambda: client.get(f"/v1/jobs/{job_id}/webhooks").json()["deliveries"][0]
                       ["attempts"], 90, "the attempt (ended by the read timeout after the flood)")
        grown = rss_mib(worker) - before
        assert os.path.exists(f"/proc/{worker}")
        assert grown < 100, f"the model worker grew by {grown} MiB reading one webhook answer"
    finally:
        receiver.close()
        s.stop()
