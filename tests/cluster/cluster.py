"""longdoc past one machine, on loopback: two API processes and three workers (cpu, model,
model), each with a data dir of its own, sharing only PostgreSQL, the S3 server, the broker
and Redis (the rate limiter) — what the scaled compose file runs, without containers."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from tests.support.rabbitmq import RabbitVhost
from tests.support.s3server import S3Server
from tests.support.stack import (
    ROOT,
    TEST_REDIS_DB,
    PostgresDatabase,
    free_port,
    wait_http,
    wait_until,
)


@dataclass
class Cluster:
    tmp: Path
    broker: str  # "redis" or "rabbitmq"
    sandbox_args: list[str] = field(default_factory=list)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)  # API port, or a worker's metrics port

    def start(self) -> Cluster:
        self.pg = PostgresDatabase()
        self.s3 = S3Server(str(self.tmp / "moto.log"))
        self.vhost = RabbitVhost() if self.broker == "rabbitmq" else None
        bucket = f"ldcluster-{secrets.token_hex(6)}"
        self.s3.client().create_bucket(Bucket=bucket)
        self.queue_prefix = f"ldcluster-{secrets.token_hex(6)}:"
        self.sandbox_url = f"http://127.0.0.1:{free_port()}"
        self.env = {
            **os.environ,
            **self.s3.env(bucket),
            "LONGDOC_DATABASE_URL": self.pg.url,
            "LONGDOC_REDIS_URL": f"redis://127.0.0.1:6379/{TEST_REDIS_DB}",
            "LONGDOC_BROKER_URL": self.vhost.url if self.vhost else "",
            # Shared by every process: without a shared data dir the queue prefix and the key
            # that seals PDF passwords cannot be derived from it.
            "LONGDOC_QUEUE_PREFIX": self.queue_prefix,
            "LONGDOC_SECRET_KEY": secrets.token_hex(32),
            "LONGDOC_MODEL_BASE_URL": f"{self.sandbox_url}/v1",
            "LONGDOC_MODEL_API_KEY": "sandbox-key",
            "LONGDOC_SWEEP_INTERVAL_S": "1",
            "LONGDOC_LEASE_S": "5",
            "LONGDOC_REDISPATCH_S": "5",
            # Recovery must come from leases and the sweep, never Redis's visibility timeout.
            "LONGDOC_VISIBILITY_TIMEOUT_S": "3600",
            "LONGDOC_LOG_LEVEL": "WARNING",
        }
        self.run_cli(["migrate"], "migrate")
        self.spawn("sandbox", [sys.executable, "-m", "service.sandbox", "--port",
                               self.sandbox_url.rsplit(":", 1)[1], "--output-tps", "0",
                               *self.sandbox_args])
        for name in ("api-1", "api-2"):
            self.start_api(name)
        for name in ("cpu", "model-a", "model-b"):
            self.start_worker(name)
        self.spawn("beat", [sys.executable, "-m", "celery", "-A", "workers.celery_app", "beat",
                            "--loglevel", "WARNING", "-s",
                            str(self.data_dir("beat") / "beat-schedule")])
        wait_http(f"{self.sandbox_url}/healthz", 60, list(self.procs.values()))
        for name in ("api-1", "api-2"):
            wait_http(f"{self.url(name)}/healthz", 60, list(self.procs.values()))
        return self

    def data_dir(self, name: str) -> Path:
        path = self.tmp / name / "data"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def spawn(self, name: str, argv: list[str], **env: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - owned by the process
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True,
                                env={**self.env, "LONGDOC_DATA_DIR": str(self.data_dir(name)),
                                     **env})
        self.procs[name] = proc
        return proc

    def run_cli(self, args: list[str], name: str) -> str:
        out = subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=ROOT,
                             env={**self.env, "LONGDOC_DATA_DIR": str(self.data_dir(name))},
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def start_api(self, name: str) -> None:
        self.ports[name] = free_port()
        self.spawn(name, [sys.executable, "-m", "uvicorn", "service.api.app:create_app",
                          "--factory", "--host", "127.0.0.1", "--port", str(self.ports[name]),
                          "--no-access-log"])

    def start_worker(self, name: str) -> None:
        """``name`` starts with its queue: cpu (prefork, 2) or model (64 threads)."""
        queue = name.split("-")[0]
        pool = ["-P", "threads", "-c", "64"] if queue == "model" else ["-P", "prefork", "-c", "2"]
        self.ports[name] = free_port()
        self.spawn(name, [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker",
                          "-Q", queue, *pool, "-n", f"{name}-{secrets.token_hex(3)}@%h",
                          "--without-gossip", "--without-mingle", "--loglevel", "INFO"],
                   LONGDOC_METRICS_PORT=str(self.ports[name]))
        log = self.tmp / f"{name}.log"
        wait_until(lambda: log.exists() and b"ready." in log.read_bytes(), 60,
                   f"worker {name} to be ready")

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def client(self, name: str, key: str) -> httpx.Client:
        return httpx.Client(base_url=self.url(name), headers={"Authorization": f"Bearer {key}"},
                            timeout=60)

    def sandbox_stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.sandbox_url}/sandbox/stats", timeout=10).json()

    def kill(self, name: str) -> None:
        """kill -9 of the process and everything it forked (a prefork pool, parsers)."""
        proc = self.procs[name]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def logs(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.tmp.glob("*.log")))

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        # What start() got as far as making.
        if getattr(self, "s3", None) is not None:
            self.s3.stop()
        if getattr(self, "pg", None) is not None:
            self.pg.drop()
        vhost = getattr(self, "vhost", None)
        if vhost is not None:
            vhost.delete()
        if getattr(self, "queue_prefix", None):
            client = redis.Redis(port=6379, db=TEST_REDIS_DB, socket_timeout=5)
            try:
                keys = list(client.scan_iter(match=f"{self.queue_prefix}*", count=1000))
                if keys:
                    client.delete(*keys)
            finally:
                client.close()
