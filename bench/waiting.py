"""How soon a waiting client hears that its job has ended: long-poll and SSE against polling.

    .venv/bin/python -m bench.waiting [--jobs 20] [--poll-s 1.0]

The whole service as ``make run`` starts it (SQLite, Redis), the sandbox answering each call
after 2.0 s. One tenant runs one-page jobs one after another; each is waited for, from a random
moment before it ends, in one of three ways, in turn: ``GET /v1/jobs/{id}?wait=30`` in a loop
(long-poll), ``GET /v1/jobs/{id}/events`` (SSE) until the stream closes, and the baseline, a
client that polls ``GET /v1/jobs/{id}`` every ``--poll-s`` seconds. The delay is the client's
clock when it learns the job has ended minus the job's ``finished_at`` (the same machine's
clock). Printed: median and maximum per way, and each against the polling baseline of the same
run.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

from tests.support.pdfgen import text_pdf
from tests.support.stack import Stack, upload, wait_document

SCHEMA = {"type": "object", "required": ["title"], "properties": {"title": {"type": "string"}}}
ENDED = ("succeeded", "failed", "canceled")


def _delay(finished_at: str, learned: float) -> float:
    return learned - datetime.fromisoformat(finished_at).timestamp()


def long_poll(client: httpx.Client, job_id: str) -> float:
    while True:
        job = client.get(f"/v1/jobs/{job_id}", params={"wait": 30}).json()
        if job["status"] in ENDED:
            return _delay(job["finished_at"], time.time())


def sse(client: httpx.Client, job_id: str) -> float:
    learned = None
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line.removeprefix("data: "))
                if event["type"] == "status" and event["data"]["status"] in ENDED:
                    learned = time.time()
                    break
    assert learned is not None, "the stream closed before the job ended"
    job = client.get(f"/v1/jobs/{job_id}").json()
    return _delay(job["finished_at"], learned)


def polling(client: httpx.Client, job_id: str, every_s: float) -> float:
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ENDED:
            return _delay(job["finished_at"], time.time())
        time.sleep(every_s)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20, help="jobs per way of waiting")
    parser.add_argument("--poll-s", type=float, default=1.0, help="the baseline's poll interval")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp), sandbox_args=["--ttft-s", "2.0"]).start()
        try:
            with stack.client(stack.create_key("waiting")["api_key"]) as client:
                doc = upload(client, "one.pdf", data=text_pdf(1, lines=20)).json()["id"]
                assert wait_document(client, doc)["status"] == "ready"
                ways = {"long-poll": lambda j: long_poll(client, j), "SSE": lambda j: sse(client, j),
                        "polling": lambda j: polling(client, j, args.poll_s)}
                delays: dict[str, list[float]] = {name: [] for name in ways}
                jitter = random.Random(1)
                for n in range(args.jobs + 1):  # the first round warms every process up
                    for name, wait in ways.items():
                        job = client.post("/v1/jobs", json={"document_ids": [doc],
                                                            "schema": SCHEMA}).json()["id"]
                        # Every job takes about the same time: starting to wait at a random
                        # moment (still before it ends) keeps each way's checks from falling
                        # in step with the job's end, which would measure the phase, not the way.
                        time.sleep(jitter.uniform(0, 1.0))
                        delay = wait(job)
                        if n:
                            delays[name].append(delay)
        finally:
            stack.stop()
    base = statistics.median(delays["polling"])
    print(f"{'way':>10} {'median':>8} {'max':>7} {'x polling':>10}   ({args.jobs} jobs each, "
          f"polling every {args.poll_s:g} s)")
    for name, values in delays.items():
        median = statistics.median(values)
        print(f"{name:>10} {median * 1000:6.0f}ms {max(values) * 1000:5.0f}ms {median / base:10.2f}")


if __name__ == "__main__":
    main()
