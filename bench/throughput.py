"""Throughput benchmarks of the whole service against the sandbox model.

    .venv/bin/python -m bench.throughput overhead  [--jobs 1000] [--backends default,s3,...]
    .venv/bin/python -m bench.throughput latency   [--jobs 500]  [--backends default,s3,...]
    .venv/bin/python -m bench.throughput ratelimit [--minutes 4]
    .venv/bin/python -m bench.throughput s3read    [--pages 1400] [--runs 3]

overhead:  one-page jobs against a zero-latency sandbox: jobs/s and CPU ms per job of the API and
           the workers (the sandbox, the S3 server, the brokers and this client not counted).
latency:   one-page jobs at the seed latency (0.47 s to first token, 144 tokens/s): the total time
           against one call's latency, and calls in flight over time.
ratelimit: tier-1 preset (500 RPM, 200k TPM) on both sides: tokens per minute against the limit.
s3read:    a parser reading a stored PDF from S3 (ranged GETs, or a downloaded copy) against a
           local file, and the PDF from upload to "ready" on local files and on S3.

overhead and latency run once per backend, in the same run, and report each against the
default (local files, Redis broker): "s3" keeps files in a bucket on moto's S3 server on
loopback, "rabbitmq" uses the machine's RabbitMQ as the broker, "s3+rabbitmq" both.
"""

from __future__ import annotations

import argparse
import io
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from bench.plot import line_plot
from tests.support.pdfgen import text_pdf
from tests.support.s3server import S3Server
from tests.support.stack import Stack, upload, wait_document, wait_until

SCHEMA = {"type": "object", "required": ["title"],
          "properties": {"title": {"type": "string"}, "total": {"type": "number"}}}
CLK = os.sysconf("SC_CLK_TCK")
OUT = Path("bench/out")
BACKENDS = ("default", "s3", "rabbitmq", "s3+rabbitmq")


def backend_stack(tmp: str, backend: str, s3: S3Server | None, **kwargs: Any) -> Stack:
    return Stack(Path(tmp), broker="rabbitmq" if "rabbitmq" in backend else "redis",
                 s3=s3 if "s3" in backend else None, **kwargs).start()


def each_backend(backends: list[str], run: Callable[[str, S3Server | None], dict[str, float]],
                 ) -> dict[str, dict[str, float]]:
    s3 = S3Server() if any("s3" in b for b in backends) else None
    try:
        return {backend: run(backend, s3) for backend in backends}
    finally:
        if s3 is not None:
            s3.stop()


def table(results: dict[str, dict[str, float]], columns: list[tuple[str, str, str]]) -> None:
    """One row per backend; each figure with its ratio to the first backend's."""
    base = next(iter(results.values()))
    print("| backend | " + " | ".join(title for _, title, _ in columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for backend, row in results.items():
        cells = [f"{row[key]:{fmt}} ({row[key] / base[key]:.2f}x)" for key, _, fmt in columns]
        print(f"| {backend} | " + " | ".join(cells) + " |")


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and of everything it has reaped or still runs below it."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        own = sum(int(x) for x in fields[11:15]) / CLK  # utime stime cutime cstime
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0.0
    return own + sum(cpu_seconds(int(c)) for c in children)


def pids_named(name: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == name:
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def infrastructure_pids(backend: str, s3: S3Server | None) -> list[int]:
    """The broker's processes and the S3 server: not the service's CPU, but where the work
    moved to (Redis and RabbitMQ are the machine's, so others' use of them counts too)."""
    broker = pids_named("beam.smp") if "rabbitmq" in backend else pids_named("redis-server")
    return broker + ([s3.proc.pid] if s3 is not None and "s3" in backend else [])


def service_cpu(stack: Stack) -> float:
    return sum(cpu_seconds(p.pid) for name, p in stack.procs.items() if name != "sandbox")


def png(seed: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (640, 480), (seed * 40 % 255, 90, 160)).save(out, "PNG")
    return out.getvalue()


def finished(stack: Stack, job_ids: set[str]) -> int:
    db = sqlite3.connect(f"file:{stack.data_dir / 'longdoc.db'}?mode=ro", uri=True, timeout=30)
    try:
        rows = db.execute("SELECT id, status FROM jobs WHERE status IN "
                          "('succeeded','failed','canceled')").fetchall()
    finally:
        db.close()
    return sum(1 for job_id, _ in rows if job_id in job_ids)


def failed(stack: Stack) -> list[tuple[str, str]]:
    db = sqlite3.connect(f"file:{stack.data_dir / 'longdoc.db'}?mode=ro", uri=True, timeout=30)
    try:
        return db.execute("SELECT error_code, error_message FROM jobs WHERE status='failed'").fetchall()
    finally:
        db.close()


def run_jobs(stack: Stack, client: httpx.Client, doc_ids: list[str], count: int, timeout: float,
             interval: float = 0.05) -> tuple[float, set[str]]:
    started = time.perf_counter()
    ids = set()
    for i in range(count):
        response = client.post("/v1/jobs", json={"document_ids": [doc_ids[i % len(doc_ids)]],
                                                 "schema": SCHEMA})
        assert response.status_code == 202, response.text
        ids.add(response.json()["id"])
    wait_until(lambda: finished(stack, ids) == count, timeout, f"{count} jobs to end", interval)
    return time.perf_counter() - started, ids


def prepare(stack: Stack, documents: list[bytes]) -> tuple[httpx.Client, list[str]]:
    client = stack.client(stack.create_key("bench")["api_key"])
    docs = [upload(client, f"d{i}.png", data=data).json()["id"] for i, data in enumerate(documents)]
    for doc_id in docs:
        assert wait_document(client, doc_id)["status"] == "ready"
    return client, docs


def overhead(args: argparse.Namespace) -> None:
    def run(backend: str, s3: S3Server | None) -> dict[str, float]:
        with tempfile.TemporaryDirectory() as tmp:
            stack = backend_stack(tmp, backend, s3)
            try:
                client, docs = prepare(stack, [png(i) for i in range(5)])
                run_jobs(stack, client, docs, 20, 60)  # warm up every process
                names = [n for n in stack.procs if n != "sandbox"]
                infra = infrastructure_pids(backend, s3)
                before = {n: cpu_seconds(stack.procs[n].pid) for n in names}
                infra_before = sum(cpu_seconds(pid) for pid in infra)
                elapsed, _ = run_jobs(stack, client, docs, args.jobs, 600)
                spent = {n: cpu_seconds(stack.procs[n].pid) - before[n] for n in names}
                infra_ms = (sum(cpu_seconds(pid) for pid in infra) - infra_before) / args.jobs * 1000
                cpu = sum(spent.values())
                print(f"[{backend}] {args.jobs} one-page jobs, zero-latency sandbox: {elapsed:.1f} s, "
                      f"{args.jobs / elapsed:.1f} jobs/s")
                print(f"[{backend}] service CPU: {cpu:.1f} s = {cpu / args.jobs * 1000:.1f} ms per job "
                      f"(API + CPU worker + model worker + beat; 2 cores)")
                print(f"[{backend}]   per process, ms per job: " + ", ".join(
                    f"{n} {spent[n] / args.jobs * 1000:.1f}" for n in names))
                print(f"[{backend}] broker and S3 server CPU: {infra_ms:.1f} ms per job")
                print(f"[{backend}] failed: {len(failed(stack))}")
                return {"jobs_s": args.jobs / elapsed, "cpu_ms": cpu / args.jobs * 1000,
                        "infra_ms": infra_ms,
                        **{f"{n}_ms": spent[n] / args.jobs * 1000 for n in ("api", "model")}}
            finally:
                stack.stop()

    results = each_backend(args.backends, run)
    print(f"\n{args.jobs} one-page jobs, zero-latency sandbox, ratio to {args.backends[0]}:")
    table(results, [("jobs_s", "jobs/s", ".1f"), ("cpu_ms", "service CPU ms/job", ".1f"),
                    ("api_ms", "API ms/job", ".1f"), ("model_ms", "model worker ms/job", ".1f"),
                    ("infra_ms", "broker + S3 server ms/job", ".1f")])


def latency(args: argparse.Namespace) -> None:
    def run(backend: str, s3: S3Server | None) -> dict[str, float]:
        with tempfile.TemporaryDirectory() as tmp:
            stack = backend_stack(tmp, backend, s3,
                                  sandbox_args=["--ttft-s", "0.47", "--output-tps", "144"])
            try:
                client, docs = prepare(stack, [png(i) for i in range(5)])
                run_jobs(stack, client, docs, 10, 60)  # warm up every process
                # One job at a time, ten times (the median), polled every 5 ms.
                alone = []
                for _ in range(10):
                    one, first = run_jobs(stack, client, docs, 1, 60, interval=0.005)
                    calls = client.get(f"/v1/jobs/{first.pop()}/calls").json()["calls"]
                    alone.append((one, calls[0]["latency_ms"] / 1000))
                one = statistics.median(t for t, _ in alone)
                call_s = statistics.median(c for _, c in alone)
                stack.sandbox(ttft_s=0.47, output_tps=144)  # resets the stats
                elapsed, _ = run_jobs(stack, client, docs, args.jobs, 600)
                stats = stack.sandbox_stats()
                print(f"[{backend}] one job alone, end to end: {one:.2f} s, of which its model call "
                      f"{call_s:.2f} s (medians of 10)")
                print(f"[{backend}] {args.jobs} jobs: {elapsed:.1f} s = {elapsed / call_s:.1f} x one "
                      f"call (serial would be {args.jobs * call_s:.0f} s); max calls in flight "
                      f"{stats['max_in_flight']}; failed: {len(failed(stack))}")
                if backend == args.backends[0]:
                    series = stats["in_flight_series"]
                    t0 = series[0][0]
                    OUT.mkdir(parents=True, exist_ok=True)
                    line_plot(OUT / "latency-in-flight.png", [(t - t0, n) for t, n in series],
                              title=f"{args.jobs} one-page jobs at 0.47 s + 144 tok/s: calls in flight",
                              xlabel="seconds", ylabel="calls in flight")
                    print(f"plot: {OUT / 'latency-in-flight.png'}")
                return {"one_s": one,
                        "overhead_ms": statistics.median(t - c for t, c in alone) * 1000,
                        "all_s": elapsed,
                        "in_flight": stats["max_in_flight"]}
            finally:
                stack.stop()

    results = each_backend(args.backends, run)
    print(f"\n{args.jobs} one-page jobs at the seed latency, ratio to {args.backends[0]}:")
    table(results, [("one_s", "one job end to end, s", ".2f"),
                    ("overhead_ms", "of which not the model call, ms", ".0f"),
                    ("all_s", f"{args.jobs} jobs, s", ".1f"), ("in_flight", "max in flight", ".0f")])


def ratelimit(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp), env_extra={"LONGDOC_RATE_LIMIT_TIER": "tier1"},
                      sandbox_args=["--ttft-s", "0.47", "--output-tps", "144", "--rpm", "500",
                                    "--tpm", "200000"]).start()
        try:
            # ~12k-token documents: each call is charged its prompt (larger than max_tokens).
            client, docs = prepare(stack, [text_pdf(18, lines=42, seed=i * 100) for i in range(8)])
            stack.sandbox(ttft_s=0.47, output_tps=144, rpm=500, tpm=200_000)
            started = time.time()
            ids: set[str] = set()
            seconds = args.minutes * 60
            # Keep a backlog: the service, not this client, decides how fast calls go.
            while time.time() - started < seconds:
                if len(ids) - finished(stack, ids) < 40:
                    for _ in range(20):
                        response = client.post("/v1/jobs", json={
                            "document_ids": [docs[len(ids) % len(docs)]], "schema": SCHEMA})
                        ids.add(response.json()["id"])
                time.sleep(1)
            stats = stack.sandbox_stats()
            done = [(t - started, n) for t, n in stats["completions"]]
            per_minute: list[tuple[float, float]] = []
            for second in range(60, int(seconds) + 1, 5):  # sliding one-minute windows
                per_minute.append((second, sum(n for t, n in done if second - 60 <= t < second)))
            steady = [n for s, n in per_minute if s >= 120]
            print(f"{len(done)} calls in {args.minutes} min; 429s from the sandbox: "
                  f"{stats['rate_limited']}; failed jobs: {len(failed(stack))}")
            print(f"tokens per minute (sliding, after the first minute's burst): min "
                  f"{min(steady)}, median {statistics.median(steady):.0f} of 200,000 = "
                  f"{statistics.median(steady) / 200_000:.1%}")
            OUT.mkdir(parents=True, exist_ok=True)
            line_plot(OUT / "ratelimit-tpm.png", per_minute, title="tier 1: tokens per minute",
                      xlabel="seconds", ylabel="tokens in the last minute", hline=200_000)
            print(f"plot: {OUT / 'ratelimit-tpm.png'}")
        finally:
            stack.stop()


def s3read(args: argparse.Namespace) -> None:
    """How a parser should read a stored file that lives in S3: through ranged GETs, from a
    copy downloaded to the worker's disk, or (the baseline) from a local file; then the same
    PDF from upload to "ready" on a stack with local files and one with S3."""
    from service.core.settings import S3Location
    from service.core.tokens import get_encoding
    from service.store.s3 import S3Storage
    from service.store.storage import LocalStorage
    from tests.support.s3server import CREDENTIALS
    from workers.isolation import ChildUsage, run_isolated
    from workers.parsing import PdfOptions, parse_document

    os.environ.update(CREDENTIALS)
    get_encoding()  # loaded once here, inherited by every forked parse
    pdf = text_pdf(args.pages, lines=42)
    s3 = S3Server()
    try:
        s3.client().create_bucket(Bucket="bench")
        remote = S3Storage(S3Location("bench", "files"), s3.endpoint)
        with tempfile.TemporaryDirectory() as tmp:
            local = LocalStorage(Path(tmp) / "files")
            key = local.put_bytes(pdf)
            remote.put_bytes(pdf)

            def parse(source: Any, storage: Any) -> int:
                pages = parse_document(source, "application/pdf", storage, PdfOptions(None, 100_000))
                return sum(p.text_tokens for p in pages)

            def downloaded() -> int:
                path = Path(tmp) / "copy.pdf"
                remote.client.download_file("bench", remote.blob_key(key), str(path))
                return parse(str(path), remote)

            strategies: dict[str, Callable[[], Callable[[], int]]] = {
                "local file (baseline)": lambda: lambda: parse(local.source(key), local),
                "S3, ranged GETs (1 MiB blocks, 16 cached)":
                    lambda: (lambda source: lambda: parse(source, remote))(remote.source(key)),
                "S3, downloaded to the worker's disk first": lambda: downloaded,
            }
            rows = []
            for name, make in strategies.items():
                times, peak = [], 0
                for _ in range(args.runs):
                    usage = ChildUsage()
                    work = make()  # as ingestion does: the source is opened before the fork
                    started = time.perf_counter()
                    tokens = run_isolated(work, cpu_s=300, memory_bytes=2 << 30, wall_s=600,
                                          usage=usage)
                    times.append(time.perf_counter() - started)
                    peak = max(peak, usage.peak_private_bytes)
                rows.append((name, min(times), peak, tokens))
        base = rows[0][1]
        print(f"\n{args.pages}-page text PDF ({len(pdf) / 1e6:.1f} MB), parsed in a forked child "
              f"(best of {args.runs}):")
        print("| source | seconds | ratio | peak private memory of the parse |")
        print("|---|---:|---:|---:|")
        for name, seconds, peak, _ in rows:
            print(f"| {name} | {seconds:.2f} | {seconds / base:.2f}x | {peak / 2**20:.0f} MiB |")
        assert len({r[3] for r in rows}) == 1, "every source gives the same token count"

        ready: dict[str, list[float]] = {}
        for backend in ("default", "s3"):
            with tempfile.TemporaryDirectory() as tmp:
                stack = backend_stack(tmp, backend, s3)
                try:
                    with stack.client(stack.create_key("bench")["api_key"]) as client:
                        ready[backend] = []
                        for run in range(args.runs):
                            started = time.perf_counter()
                            # A different PDF each run: no upload is a duplicate of another.
                            data = pdf + f"%run {run}\n".encode()
                            doc = upload(client, "long.pdf", data=data).json()
                            assert wait_document(client, doc["id"], 180)["status"] == "ready"
                            ready[backend].append(time.perf_counter() - started)
                finally:
                    stack.stop()
        print(f"\nPOST /v1/documents to ready, the same {args.pages}-page PDF (best of {args.runs}):")
        print("| storage | seconds | ratio |")
        print("|---|---:|---:|")
        for backend, times in ready.items():
            print(f"| {backend} | {min(times):.2f} | {min(times) / min(ready['default']):.2f}x |")
    finally:
        s3.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["overhead", "latency", "ratelimit", "s3read"])
    parser.add_argument("--pages", type=int, default=1400)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--minutes", type=float, default=4)
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help=f"comma-separated, the first is the baseline: {', '.join(BACKENDS)}")
    args = parser.parse_args()
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(args.backends) - set(BACKENDS)
    if unknown:
        parser.error(f"unknown backends: {', '.join(sorted(unknown))}")
    if args.mode == "overhead":
        args.jobs = args.jobs or 1000
        overhead(args)
    elif args.mode == "latency":
        args.jobs = args.jobs or 500
        latency(args)
    elif args.mode == "s3read":
        s3read(args)
    else:
        ratelimit(args)


if __name__ == "__main__":
    main()
