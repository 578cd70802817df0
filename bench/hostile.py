"""Another tenant's upload latency while hostile jobs are validated (issue: hostile requests).

    .venv/bin/python -m bench.hostile [--uploads 200] [--jobs 20]

Tenant B uploads small PNGs one after another, first alone (the baseline), then while tenant A
runs jobs whose answers are validated against a catastrophic pattern (``^(a+)+$`` inside
``anyOf``, an answer of 30 ``a``s and ``!``) and sends 60,000-property schemas that are refused.
Reported: p50/p99 of B's upload latency in both phases and their ratio (same run, same stack).
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image

from tests.support.pdfgen import build_pdf
from tests.support.stack import Stack, upload, wait_document, wait_until

REDOS = {"type": "object", "required": ["code"], "properties": {
    "code": {"anyOf": [{"type": "string", "pattern": "^(a+)+$"}, {"type": "integer"}]}}}
HUGE = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(60_000)}}


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), "white").save(out, "PNG")
    return out.getvalue()


def latencies(stack: Stack, key: str, n: int) -> list[float]:
    times = []
    data = png()
    with stack.client(key) as client:
        for i in range(n):
            started = time.perf_counter()
            response = upload(client, f"b{i}.png", data=data)
            times.append(time.perf_counter() - started)
            assert response.status_code == 201, response.text
    return times


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--uploads", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp)).start()
        try:
            a, b = stack.create_key("attacker")["api_key"], stack.create_key("victim")["api_key"]
            baseline = latencies(stack, b, args.uploads)
            with stack.client(a) as client:
                pdf = build_pdf([("text", ["code: " + "a" * 30 + "!"])])
                doc = upload(client, "redos.pdf", data=pdf).json()
                wait_document(client, doc["id"])
            stop = threading.Event()

            def attack() -> None:
                with stack.client(a) as client:
                    sent = 0
                    while not stop.is_set():
                        schema = HUGE if sent % 4 == 3 else REDOS
                        client.post("/v1/jobs", json={"document_ids": [doc["id"]], "schema": schema,
                                                      "instructions": f"run {sent}"})
                        sent += 1
                        if sent >= args.jobs:
                            break

            attacker = threading.Thread(target=attack)
            attacker.start()
            under_attack = latencies(stack, b, args.uploads)
            stop.set()
            attacker.join()
            with stack.client(a) as client:
                wait_until(lambda: not client.get("/v1/jobs", params={"status": "running"}).json()["data"],
                           120, "the attacker's jobs to end")
        finally:
            stack.stop()
    print(f"uploads of tenant B: {args.uploads} alone, {args.uploads} beside {args.jobs} hostile jobs")
    print(f"  alone:        p50 {pct(baseline, 50):7.1f} ms   p99 {pct(baseline, 99):7.1f} ms")
    print(f"  under attack: p50 {pct(under_attack, 50):7.1f} ms   p99 {pct(under_attack, 99):7.1f} ms")
    print(f"  p99 ratio: {pct(under_attack, 99) / pct(baseline, 99):.2f}x")


if __name__ == "__main__":
    main()
