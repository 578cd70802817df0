"""Fair scheduling, proved on the real pipeline at the seed latency (0.47 s to first token,
144 tokens/s): tenant A holds 2,000 queued chunks, tenant B's one-page job still ends after a
few calls — counted from the database, not timed."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.fairness import backlog, chunk_counts, drain, one_page_job, tenant_of
from tests.support.pdfgen import text_pdf
from tests.support.stack import start_stack, upload, wait_document, wait_until

WINDOW, THREADS = 128, 64  # LONGDOC_DISPATCH_WINDOW and the model worker's calls in flight
# The production dispatch window, redispatch delay and lease: the test stacks' 5 s would re-send
# calls that merely wait in a busy broker, or whose worker is slow to record them on a loaded
# machine, and count them twice ahead of B. Recovery has its own tests.
SETTINGS = {"LONGDOC_DISPATCH_WINDOW": str(WINDOW), "LONGDOC_REDISPATCH_S": "60",
            "LONGDOC_LEASE_S": "30"}


def test_a_backlog_of_2000_chunks_delays_another_tenants_one_page_job_by_a_few_calls(
        tmp_path: Path) -> None:
    stack = start_stack(tmp_path, model_concurrency=THREADS,
                        env_extra=SETTINGS,
                        sandbox_args=["--ttft-s", "0.47", "--output-tps", "144"])
    try:
        a = json.loads(stack.longdoc(["tenants", "create", "--tenant", "hoarder"]))["api_key"]
        b = json.loads(stack.longdoc(["tenants", "create", "--tenant", "small"]))["api_key"]
        with stack.client(a) as client_a, stack.client(b) as client_b:
            big = upload(client_a, "big.pdf", data=text_pdf(400, lines=60)).json()["id"]
            one = upload(client_b, "one.pdf", data=text_pdf(1, lines=20, seed=9)).json()["id"]
            assert wait_document(client_a, big, 120)["status"] == "ready"
            assert wait_document(client_b, one)["status"] == "ready"
            jobs = backlog(client_a, big, 2000)
            tenant_a = tenant_of(stack, jobs[0])
            wait_until(lambda: chunk_counts(stack, tenant_a).get("done", 0) >= WINDOW, 120,
                       "A's calls to be under way (a full window)")

            wait = one_page_job(stack, client_b, one, tenant_a)
            print(f"\nB beside {wait.backlog} of A's chunks: {wait.latency_s:.2f} s = "
                  f"{wait.calls:.1f} x its call ({wait.call_s:.2f} s; dispatched after "
                  f"{wait.to_dispatch_s:.2f} s, {wait.in_broker_s:.2f} s in the broker); A "
                  f"finished {wait.a_done_meanwhile} meanwhile, {wait.a_left_after} left")
            assert wait.backlog >= 1500, "A's backlog was still there when B came"
            # First in, first out, B would wait for every one of A's chunks. Fairly, B's call
            # goes out at the first free slot, behind at most the window's queued calls, then
            # takes one call: A finishes at most a window and a round of threads meanwhile.
            assert wait.a_done_meanwhile <= WINDOW + THREADS, wait
            assert wait.a_left_after >= 1000, wait
            drain(stack, client_a, jobs)
    finally:
        stack.stop()
