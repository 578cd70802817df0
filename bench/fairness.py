"""Fairness between tenants: tenant B's one-page job beside tenant A's backlog of queued chunks.

    .venv/bin/python -m bench.fairness [--backlogs 0,200,2000] [--repeat 3]

The whole service as ``make run`` starts it (SQLite, one model worker with 64 threads,
``LONGDOC_DISPATCH_WINDOW`` 128) against the sandbox at the seed latency (0.47 s to first token,
144 tokens/s). For each backlog size, in one run: A submits jobs of small calls on a 400-page
document until it holds that many chunks, its calls get under way, then B submits a one-page job;
B's latency (its rows' created -> finished), where it went (dispatch, broker, call), and how many
of A's chunks finished meanwhile are read from the database. A's jobs are then canceled and the
next size starts from an idle service. The baseline is B alone (backlog 0) in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from tests.support.fairness import Wait, backlog, chunk_counts, drain, one_page_job, tenant_of
from tests.support.pdfgen import text_pdf
from tests.support.records import query
from tests.support.stack import Stack, upload, wait_document, wait_until

WINDOW, THREADS = 128, 64
# The production dispatch window and redispatch delay (the test stacks' 5 s would re-send calls
# that merely wait in a busy broker, and count them twice ahead of B).
SETTINGS = {"LONGDOC_DISPATCH_WINDOW": str(WINDOW), "LONGDOC_REDISPATCH_S": "60"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backlogs", default="0,200,2000")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(x) for x in args.backlogs.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp), model_concurrency=THREADS,
                      env_extra=SETTINGS,
                      sandbox_args=["--ttft-s", "0.47", "--output-tps", "144"]).start()
        try:
            a = json.loads(stack.longdoc(["tenants", "create", "--tenant", "a"]))["api_key"]
            b = json.loads(stack.longdoc(["tenants", "create", "--tenant", "b"]))["api_key"]
            with stack.client(a) as client_a, stack.client(b) as client_b:
                big = upload(client_a, "big.pdf", data=text_pdf(400, lines=60)).json()["id"]
                one = upload(client_b, "one.pdf", data=text_pdf(1, lines=20, seed=9)).json()["id"]
                assert wait_document(client_a, big, 120)["status"] == "ready"
                assert wait_document(client_b, one)["status"] == "ready"
                tenant_a = str(query(stack, "SELECT id FROM tenants WHERE name = 'a'")[0][0])
                one_page_job(stack, client_b, one, tenant_a)  # warm every process up
                print(f"{'A backlog':>10} {'B latency':>10} {'x call':>7} {'dispatch':>9} "
                      f"{'broker':>7} {'call':>6} {'A done meanwhile':>17}")
                for size in sizes:
                    runs: list[Wait] = []
                    for _ in range(args.repeat):
                        jobs = backlog(client_a, big, size) if size else []
                        if jobs:
                            target = chunk_counts(stack, tenant_a).get("done", 0) + WINDOW

                            def under_way(target: int = target) -> bool:
                                return chunk_counts(stack, tenant_a).get("done", 0) >= target

                            wait_until(under_way, 300, "A's calls under way")
                        wait = one_page_job(stack, client_b, one, tenant_a)
                        runs.append(wait)
                        if jobs:
                            assert tenant_of(stack, jobs[0]) == tenant_a
                            drain(stack, client_a, jobs)
                    for wait in runs:
                        print(f"{wait.backlog:>10} {wait.latency_s:>9.2f}s {wait.calls:>6.1f}x "
                              f"{wait.to_dispatch_s:>8.2f}s {wait.in_broker_s:>6.2f}s "
                              f"{wait.to_end_s:>5.2f}s {wait.a_done_meanwhile:>17}")
                    median = statistics.median(w.latency_s for w in runs)
                    print(f"  backlog {size}: median {median:.2f} s")
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
