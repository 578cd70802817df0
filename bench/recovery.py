"""Recovery benchmarks (issue: nothing lost, nothing stuck).

    .venv/bin/python -m bench.recovery kill   [--jobs 20] [--lease 30]
    .venv/bin/python -m bench.recovery sweep  [--idle 10000 50000]

kill:  one-call jobs at a 3 s model latency; the model worker is killed (-9) while its calls are
       in flight and a new one started at once. Reported: time from the kill to the last job's
       end, against the same load without a kill (same run), with the broker's visibility timeout
       at an hour — recovery comes from the lease.
sweep: the recovery sweep's cost with N ended jobs (and their chunks, calls and documents) in
       the database, against an empty database, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import argparse
import io
import secrets
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from PIL import Image
from sqlalchemy import insert

from service.core.settings import Settings
from service.store.db import Database
from service.store.migrate import upgrade
from service.store.models import Chunk, Document, Job, ModelCall, Tenant, utcnow
from service.store.queue import make_celery
from tests.support.stack import PostgresDatabase, Stack, upload, wait_document, wait_job, wait_until
from workers.context import WorkerContext
from workers.stages.sweep import sweep

SCHEMA = {"type": "object", "required": ["title"], "properties": {"title": {"type": "string"}}}


def png(seed: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (320, 200), (seed * 37 % 255, 90, 60)).save(out, "PNG")
    return out.getvalue()


def kill_run(jobs: int, lease: int, kill: bool) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp), env_extra={"LONGDOC_VISIBILITY_TIMEOUT_S": "3600",
                                            "LONGDOC_LEASE_S": str(lease),
                                            "LONGDOC_SWEEP_INTERVAL_S": "2"},
                      sandbox_args=["--ttft-s", "3"]).start()
        try:
            with stack.client(stack.create_key("bench")["api_key"]) as client:
                doc = upload(client, "a.png", data=png(1)).json()
                wait_document(client, doc["id"])
                ids = [client.post("/v1/jobs", json={"document_ids": [doc["id"]], "schema": SCHEMA,
                                                     "instructions": f"run {i}"}).json()["id"]
                       for i in range(jobs)]
                wait_until(lambda: stack.sandbox_stats()["in_flight"] >= jobs, 60, "calls in flight")
                started = time.monotonic()
                if kill:
                    stack.kill("model")
                    stack.start_worker("model", name="model-2")
                ended = [wait_job(client, j, 600) for j in ids]
                elapsed = time.monotonic() - started
                assert all(j["status"] == "succeeded" for j in ended)
                return elapsed
        finally:
            stack.stop()


def seed_idle(db: Database, jobs: int) -> None:
    """Ended jobs as a busy month leaves them: a document, a job, two chunks, two calls each."""
    now = utcnow() - timedelta(days=1)
    with db.unit_of_work() as uow:
        tenant = f"ten_{secrets.token_hex(12)}"
        uow.session.add(Tenant(id=tenant, name=tenant, webhook_secret="whsec_x"))
        uow.session.flush()
        for start in range(0, jobs, 1000):
            batch = range(start, min(jobs, start + 1000))
            docs = [{"id": f"doc_{i:024x}", "tenant_id": tenant, "sha256": "0" * 64,
                     "media_type": "application/pdf", "bytes": 1, "status": "ready", "pages": 1,
                     "attempts": 0, "created_at": now, "updated_at": now} for i in batch]
            rows = [{"id": f"job_{i:024x}", "tenant_id": tenant, "status": "succeeded",
                     "schema": SCHEMA, "options": {}, "profile": "gpt-4.1-nano", "attempts": 0,
                     "chunks_total": 2, "chunks_done": 2, "prompt_tokens": 1, "cached_tokens": 0,
                     "completion_tokens": 1, "cost_usd": 0.0, "finalizing": True,
                     "unknown_calls": 0, "created_at": now} for i in batch]
            chunks = [{"id": f"chk_{i:023x}{k}", "job_id": f"job_{i:024x}", "tenant_id": tenant,
                       "ordinal": f"{k:05d}", "parts": [], "status": "done", "attempts": 0,
                       "predicted_tokens": 1, "created_at": now, "updated_at": now}
                      for i in batch for k in range(2)]
            calls = [{"job_id": f"job_{i:024x}", "chunk_id": f"chk_{i:023x}{k}",
                      "status": "answered", "purpose": "extract", "predicted_prompt_tokens": 1,
                      "prompt_tokens": 1, "cached_tokens": 0, "completion_tokens": 1,
                      "cost_usd": 0.0, "latency_ms": 1, "created_at": now}
                     for i in batch for k in range(2)]
            for model, values in ((Document, docs), (Job, rows), (Chunk, chunks), (ModelCall, calls)):
                uow.session.execute(insert(model), values)


def sweep_ms(url: str, idle: int, rounds: int = 20) -> float:
    settings = Settings(database_url=url, data_dir=Path(tempfile.mkdtemp()))
    upgrade(settings.resolved_database_url)
    ctx = WorkerContext.build(settings, make_celery(settings))
    seed_idle(ctx.db, idle)
    sweep(ctx)  # warm
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        sweep(ctx)
        times.append((time.perf_counter() - started) * 1000)
    ctx.db.dispose()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["kill", "sweep"])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--lease", type=int, default=30)
    parser.add_argument("--idle", type=int, nargs="+", default=[10_000, 50_000])
    args = parser.parse_args()
    if args.what == "kill":
        base = kill_run(args.jobs, args.lease, kill=False)
        killed = kill_run(args.jobs, args.lease, kill=True)
        print(f"{args.jobs} one-call jobs, 3 s model latency, lease {args.lease} s, "
              "visibility timeout 3600 s")
        print(f"  no kill:       {base:6.1f} s to the last job's end")
        print(f"  kill -9 model: {killed:6.1f} s  (+{killed - base:.1f} s, {killed / base:.1f}x)")
        return
    for name in ("sqlite", "postgresql"):
        for idle in [0, *args.idle]:
            if name == "sqlite":
                url = f"sqlite:///{tempfile.mkdtemp()}/bench.db"
                ms = sweep_ms(url, idle)
            else:
                pg = PostgresDatabase()
                try:
                    ms = sweep_ms(pg.url, idle)
                finally:
                    pg.drop()
            if idle == 0:
                empty = ms
            print(f"{name:10s} {idle:7d} ended jobs: sweep {ms:7.2f} ms  ({ms / empty:.2f}x empty)")


if __name__ == "__main__":
    main()
