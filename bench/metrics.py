"""What the Prometheus instrumentation costs.

    .venv/bin/python -m bench.metrics [--rows 10000 100000] [--requests 3000]

ops:      CPU per metric update, in the process (the API) and in multiprocess files (workers).
hooks:    the session listeners that count finished jobs and upload bytes: unit-of-work commits
          with and without them (same run, same database).
http:     the HTTP middleware: requests to the API with and without it (same run).
scrape:   GET /metrics of the API (grouped counts over N jobs and documents on SQLite and
          PostgreSQL, the broker probe on Redis and RabbitMQ) and a worker's exposition.

The end-to-end figure is ``bench.throughput overhead``: beside it these say how much of a
job's CPU the instrumentation is, which a with-and-without run of the whole service could not
tell apart from its run-to-run noise.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from sqlalchemy import event, select
from sqlalchemy.orm import Session

N_OPS = 200_000


def cpu_us(fn: Callable[[], object], n: int) -> float:
    started = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - started) / n * 1e6


def ops() -> None:
    """Run in a process of its own: the multiprocess variable must precede the import."""
    from service import metrics as m

    mode = "multiprocess files (workers)" if os.environ.get(m.MULTIPROC_ENV) else "in process (API)"
    counter = m.TOKENS.labels("gpt-4.1-nano", "prompt")
    histogram = m.CALL_SECONDS.labels("gpt-4.1-nano", "ok")
    gauge = m.CALLS_IN_FLIGHT.labels("gpt-4.1-nano")
    figures = {
        "counter inc": cpu_us(lambda: counter.inc(5), N_OPS),
        "histogram observe": cpu_us(lambda: histogram.observe(0.7), N_OPS),
        "gauge inc": cpu_us(gauge.inc, N_OPS),
        "labels() + inc": cpu_us(lambda: m.TOKENS.labels("gpt-4.1-nano", "prompt").inc(1), N_OPS),
    }
    print(f"| {mode} | " + " | ".join(f"{v:.2f}" for v in figures.values()) + " |")


def run_ops() -> None:
    print("\n### CPU per metric update, µs\n")
    print("| values kept | counter inc | histogram observe | gauge inc | labels() + inc |")
    print("|---|---:|---:|---:|---:|")
    for multi in (False, True):
        with tempfile.TemporaryDirectory() as path:
            env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": path} if multi else {
                k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
            subprocess.run([sys.executable, "-m", "bench.metrics", "--ops-only"], env=env,
                           check=True)


def hooks(rounds: int = 2000) -> None:
    """Commits that end a job or add a document, with the counting listeners on and off."""
    from bench.recovery import seed_idle
    from service import metrics
    from service.store.db import Database
    from service.store.migrate import upgrade
    from service.store.models import Job

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/hooks.db"
        upgrade(url)
        db = Database(url)
        seed_idle(db, rounds)
        with db.session() as session:
            ids = list(session.scalars(select(Job.id)))
        listeners = [(Session, "after_flush", metrics._note_ends_and_uploads),
                     (Session, "after_commit", metrics._count_committed),
                     (Session, "after_rollback", metrics._forget_rolled_back)]

        def commits(job_ids: list[str]) -> float:
            started = time.process_time()
            for job_id in job_ids:
                with db.unit_of_work() as uow:
                    job = uow.session.get(Job, job_id)
                    assert job is not None
                    job.status = "failed"
            return (time.process_time() - started) / len(job_ids) * 1e6

        commits(ids[:100])  # warm
        on: list[float] = []
        off: list[float] = []
        # Alternating blocks of 100 commits, so drift (the WAL growing) hits both.
        for i in range(100, len(ids) - 199, 200):
            on.append(commits(ids[i:i + 100]))
            for target, name, fn in listeners:
                event.remove(target, name, fn)
            off.append(commits(ids[i + 100:i + 200]))
            for target, name, fn in listeners:
                event.listen(target, name, fn)
        db.dispose()
    on_us, off_us = statistics.median(on), statistics.median(off)
    print("\n### Session listeners: a commit that ends a job (SQLite), µs of CPU\n")
    print("| listeners | per commit |\n|---|---:|")
    print(f"| off | {off_us:.0f} |\n| on | {on_us:.0f} ({on_us / off_us:.3f}×) |")


def http(requests: int) -> None:
    """``GET /healthz`` called straight through the ASGI interface (no client, no socket), with
    and without the middleware, in alternating blocks so drift hits both."""
    import asyncio

    from starlette.types import ASGIApp, Message

    from service.api.app import create_app
    from service.api.http_metrics import HttpMetrics
    from service.core.settings import Settings

    async def call(app: ASGIApp) -> None:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "GET", "scheme": "http", "path": "/healthz", "raw_path": b"/healthz",
                 "root_path": "", "query_string": b"", "headers": [],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            pass

        await app(scope, receive, send)

    async def block(app: ASGIApp, n: int) -> float:
        started = time.process_time()
        for _ in range(n):
            await call(app)
        return (time.process_time() - started) / n * 1e6

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), model_check_timeout_s=0)
        with_it = create_app(settings)
        without = create_app(settings)
        without.user_middleware = [m for m in without.user_middleware
                                   if not (isinstance(m.cls, type) and issubclass(m.cls, HttpMetrics))]

        async def run() -> dict[str, list[float]]:
            timings: dict[str, list[float]] = {"with": [], "without": []}
            await block(with_it, 200)
            await block(without, 200)
            for _ in range(requests // 200):
                timings["with"].append(await block(with_it, 200))
                timings["without"].append(await block(without, 200))
            return timings

        timings = asyncio.run(run())
    w, wo = statistics.median(timings["with"]), statistics.median(timings["without"])
    print("\n### HTTP middleware: GET /healthz through ASGI, µs of CPU per request\n")
    print(f"| middleware | per request |\n|---|---:|\n| without | {wo:.0f} |\n"
          f"| with | {w:.0f} ({w - wo:+.0f} µs, {w / wo:.2f}×) |")


def scrape(rows: list[int]) -> None:
    """The scrape-time gauges: grouped counts over N ended jobs and documents, and the probes."""
    from bench.recovery import seed_idle
    from service import metrics
    from service.api.routes.metrics import count_statuses, count_waiting
    from service.core.settings import Settings
    from service.store.db import Database
    from service.store.migrate import upgrade
    from tests.support.rabbitmq import RabbitVhost
    from tests.support.stack import PostgresDatabase

    def ms(fn: Callable[[], object], rounds: int = 20) -> float:
        fn()
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            fn()
            times.append((time.perf_counter() - started) * 1000)
        return statistics.median(times)

    print("\n### A scrape's gauges, median wall ms\n")
    print("| what | " + " | ".join(f"{n:,} jobs + documents" for n in rows) + " |")
    print("|---|" + "---:|" * len(rows))
    for engine in ("sqlite", "postgresql"):
        cells = []
        for n in rows:
            with tempfile.TemporaryDirectory() as tmp:
                pg = PostgresDatabase() if engine == "postgresql" else None
                try:
                    url = pg.url if pg else f"sqlite:///{tmp}/scrape.db"
                    upgrade(url)
                    db = Database(url)
                    seed_idle(db, n)
                    if pg is not None:  # as autovacuum would have: index-only scans
                        with db.engine.connect().execution_options(
                                isolation_level="AUTOCOMMIT") as conn:
                            conn.exec_driver_sql("VACUUM ANALYZE")
                    cells.append(f"{ms(partial(count_statuses, db)):.1f}")
                    db.dispose()
                finally:
                    if pg is not None:
                        pg.drop()
        print(f"| jobs and documents by status, {engine} | " + " | ".join(cells) + " |")
    redis_settings = Settings(data_dir=Path(tempfile.mkdtemp()), queue_prefix="bench-metrics:")
    redis_ms = ms(lambda: count_waiting(redis_settings))
    print(f"| queue depth, Redis (LLEN × 8, one round trip) | {redis_ms:.1f} |")
    vhost = RabbitVhost()
    try:
        amqp = Settings(data_dir=Path(tempfile.mkdtemp()), broker_url=vhost.url)
        print(f"| queue depth, RabbitMQ (connect + 2 passive declares) | "
              f"{ms(lambda: count_waiting(amqp)):.1f} |")
    finally:
        vhost.delete()
    metrics.start_series({"cpu", "model"}, "gpt-4.1-nano")
    print(f"| the process's own series (exposition) | {ms(metrics.exposition):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--ops-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.disable(logging.INFO)  # alembic's and httpx's lines between the tables
    if args.ops_only:
        ops()
        return
    run_ops()
    hooks()
    http(args.requests)
    scrape(args.rows)


if __name__ == "__main__":
    main()
