"""Real processes for end-to-end tests: sandbox model, API, Celery workers, beat, receivers."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psycopg
import redis
from standardwebhooks import Webhook

if TYPE_CHECKING:
    from tests.support.rabbitmq import RabbitVhost
    from tests.support.s3server import S3Server

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "corpus"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def no_temporary_files(data_dir: Path) -> None:
    """Waits (with a deadline) until no temporary upload file is left under ``data_dir``: a
    worker committing an artifact of an earlier request holds one for a moment; a refused
    upload's would stay."""
    tmp = data_dir / "files" / "tmp"
    wait_until(lambda: not list(tmp.iterdir()), 30, f"no temporary file in {tmp}")


def wait_http(url: str, timeout: float, procs: list[subprocess.Popen[bytes]] | None = None) -> None:
    def ok() -> bool:
        for proc in procs or []:
            if proc.poll() is not None:
                raise AssertionError(f"process exited while starting: {proc.args!r}")
        try:
            return httpx.get(url, timeout=1).status_code < 500
        except httpx.HTTPError:
            return False

    wait_until(ok, timeout, url, 0.1)


class PostgresDatabase:
    """A fresh database per stack on the local PostgreSQL."""

    def __init__(self) -> None:
        self.name = f"longdoc_test_{secrets.token_hex(4)}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        self.url = f"postgresql://postgres@127.0.0.1:5432/{self.name}"

    def drop(self) -> None:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


TEST_REDIS_DB = 15  # make run uses 0; every stack has its own key prefix within this one


@dataclass
class Stack:
    """The whole service on loopback, as ``make run`` starts it, with its own data and queues."""

    tmp: Path
    database: str = "sqlite"
    env_extra: dict[str, str] = field(default_factory=dict)
    model_concurrency: int = 64
    sandbox_args: list[str] = field(default_factory=list)
    # A Redis of its own (a broker the test may stop or flush without touching other stacks).
    private_redis: bool = False
    # "rabbitmq": the machine's RabbitMQ is the broker, in a vhost of this stack's own.
    broker: str = "redis"
    # Files in a bucket of this stack's own on this S3 server instead of the data dir.
    s3: S3Server | None = None
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    vhost: RabbitVhost | None = None
    bucket: str = ""
    # Worker name to the port its /metrics is served on (each worker a port of its own).
    metrics_ports: dict[str, int] = field(default_factory=dict)

    def start(self) -> Stack:
        self.data_dir = self.tmp / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.pg = PostgresDatabase() if self.database == "postgresql" else None
        backends: dict[str, str] = {}
        if self.broker == "rabbitmq":
            from tests.support.rabbitmq import RabbitVhost

            self.vhost = RabbitVhost()
            backends["LONGDOC_BROKER_URL"] = self.vhost.url
        if self.s3 is not None:
            self.bucket = f"ldtest-{secrets.token_hex(6)}"
            self.s3.client().create_bucket(Bucket=self.bucket)
            backends.update(self.s3.env(self.bucket))
        self.redis_port = free_port() if self.private_redis else 6379
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/{TEST_REDIS_DB}"
        self.queue_prefix = f"ldtest-{secrets.token_hex(6)}:"
        self.api_port, self.sandbox_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.sandbox_url = f"http://127.0.0.1:{self.sandbox_port}"
        self.env = {
            **os.environ,
            "LONGDOC_DATA_DIR": str(self.data_dir),
            "LONGDOC_DATABASE_URL": self.pg.url if self.pg else "",
            "LONGDOC_REDIS_URL": self.redis_url,
            "LONGDOC_QUEUE_PREFIX": self.queue_prefix,
            "LONGDOC_MODEL_BASE_URL": f"{self.sandbox_url}/v1",
            "LONGDOC_MODEL_API_KEY": "sandbox-key",
            "LONGDOC_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8,::1/128",
            "LONGDOC_URL_ALLOWED_NETWORKS": "127.0.0.0/8,::1/128",
            "LONGDOC_WEBHOOK_RETRY_SCHEDULE": "0,0.5,1,1,1",
            "LONGDOC_SWEEP_INTERVAL_S": "1",
            # Recovery within seconds, not the production minute: a dead worker's lease lapses
            # after 5 s, a lost message is sent again after 5 s.
            "LONGDOC_LEASE_S": "5",
            "LONGDOC_REDISPATCH_S": "5",
            "LONGDOC_MODEL_CONCURRENCY": str(self.model_concurrency),
            "LONGDOC_LOG_LEVEL": "WARNING",
            **backends,
            **self.env_extra,
        }
        if self.private_redis:
            self.start_redis()
        self.longdoc(["migrate"])
        # The sandbox keeps its own model table; a deployment's profile file applies to both.
        profiles = self.env.get("LONGDOC_MODEL_PROFILES_FILE")
        self._spawn("sandbox", [sys.executable, "-m", "service.sandbox", "--port",
                                str(self.sandbox_port), "--ttft-s", "0", "--output-tps", "0",
                                *(["--profiles-file", profiles] if profiles else []),
                                *self.sandbox_args])
        self._spawn("api", [sys.executable, "-m", "uvicorn", "service.api.app:create_app",
                            "--factory",
                            "--host", "127.0.0.1", "--port", str(self.api_port), "--no-access-log"])
        self.start_worker("cpu")
        self.start_worker("model")
        self._spawn("beat", [sys.executable, "-m", "celery", "-A", "workers.celery_app", "beat",
                             "--loglevel", "WARNING", "-s", str(self.data_dir / "beat-schedule")])
        procs = list(self.procs.values())
        wait_http(f"{self.sandbox_url}/healthz", 60, procs)
        wait_http(f"{self.url}/healthz", 60, procs)
        return self

    def start_redis(self) -> None:
        """The private Redis, on the same port each time (it keeps nothing on disk)."""
        proc = self._spawn("redis", ["redis-server", "--port", str(self.redis_port), "--bind",
                                     "127.0.0.1", "--save", "", "--appendonly", "no",
                                     "--dir", str(self.tmp)])

        def answers() -> bool:
            if proc.poll() is not None:
                raise AssertionError("redis-server exited while starting")
            try:
                return bool(redis.Redis(port=self.redis_port, socket_timeout=1).ping())
            except redis.RedisError:
                return False

        wait_until(answers, 20, "the private Redis to answer")

    def stop_redis(self) -> None:
        self.kill("redis", signal.SIGTERM)

    def _spawn(self, name: str, argv: list[str],
               env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - owned by the process
        proc = subprocess.Popen(argv, env={**self.env, **(env or {})}, cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def start_worker(self, queue: str, name: str | None = None) -> subprocess.Popen[bytes]:
        pool = (["-P", "threads", "-c", str(self.model_concurrency)] if queue == "model"
                else ["-P", "prefork", "-c", "2"])
        name = name or queue
        self.metrics_ports[name] = free_port()
        proc = self._spawn(name, [
            sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", queue,
            *pool, "-n", f"{name}-{secrets.token_hex(3)}@%h", "--without-gossip",
            "--without-mingle", "--loglevel", "INFO"],
            env={"LONGDOC_METRICS_PORT": str(self.metrics_ports[name])})
        self.wait_worker(name)
        return proc

    def wait_worker(self, name: str) -> None:
        log = self.tmp / f"{name}.log"
        # Celery prints "ready." at WARNING level once it consumes.
        wait_until(lambda: log.exists() and b"ready." in log.read_bytes(), 60,
                   f"worker {name} to be ready")

    def longdoc(self, args: list[str]) -> str:
        out = subprocess.run([sys.executable, "-m", "service.cli", *args], env=self.env, cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def create_key(self, tenant: str) -> dict[str, str]:
        return json.loads(self.longdoc(["keys", "create", "--tenant", tenant]))

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def sandbox(self, **config: Any) -> None:
        """Sets the sandbox's options; those not named return to the tests' defaults (instant)."""
        config = {"ttft_s": 0.0, "output_tps": 0.0, **config}
        httpx.post(f"{self.sandbox_url}/sandbox/config", json=config, timeout=10).raise_for_status()

    def sandbox_stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.sandbox_url}/sandbox/stats", timeout=10).json()

    def broker_idle(self) -> bool:
        """No task waits in a queue and none is held by a worker (Redis broker keys)."""
        assert self.vhost is None, "on RabbitMQ, count what the consumers saw instead"
        client = redis.Redis.from_url(self.redis_url)
        try:
            waiting = sum(client.llen(f"{self.queue_prefix}{q}") for q in ("cpu", "model"))
            unacked = client.hlen(f"{self.queue_prefix}unacked")
            return waiting == 0 and unacked == 0
        finally:
            client.close()

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=30)

    def pause(self, name: str, paused: bool = True) -> None:
        """Stops a process group (SIGSTOP) or lets it go on (SIGCONT): alive, but doing nothing."""
        os.killpg(self.procs[name].pid, signal.SIGSTOP if paused else signal.SIGCONT)

    def stop(self) -> None:
        for name in list(self.procs):
            proc = self.procs[name]
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
        if self.pg:
            self.pg.drop()
        if self.vhost is not None:
            self.vhost.delete()  # its queues and exchanges with it
            self.vhost = None
        self.clear_broker_keys()

    def clear_broker_keys(self) -> None:
        if not getattr(self, "queue_prefix", None):
            return  # a stack put together by hand, with a Redis of its own
        client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=2, socket_timeout=5)
        try:
            keys = list(client.scan_iter(match=f"{self.queue_prefix}*", count=1000))
            if keys:
                client.delete(*keys)
        except redis.RedisError:
            pass  # a test that stopped Redis
        finally:
            client.close()

    def logs(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-4000:]}"
                         for p in sorted(self.tmp.glob("*.log")))


def start_stack(tmp: Path, database: str = "sqlite", **kwargs: Any) -> Stack:
    """A stack of its own (for tests that change its configuration); stopped by the caller."""
    stack = Stack(tmp, database=database, **kwargs)
    try:
        return stack.start()
    except BaseException:
        print(stack.logs())
        stack.stop()
        raise


def upload(client: httpx.Client, path: Path | str, data: bytes | None = None,
           password: str | None = None, filename: str | None = None) -> httpx.Response:
    content = data if data is not None else Path(path).read_bytes()
    fields = {"password": password} if password else None
    return client.post("/v1/documents", files={"file": (filename or Path(path).name, content)},
                       data=fields)


def wait_document(client: httpx.Client, doc_id: str, timeout: float = 60) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body = client.get(f"/v1/documents/{doc_id}").json()
        return body if body["status"] != "processing" else None

    return wait_until(done, timeout, f"document {doc_id} to finish processing")


def wait_job(client: httpx.Client, job_id: str, timeout: float = 90) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body = client.get(f"/v1/jobs/{job_id}").json()
        return body if body["status"] in ("succeeded", "failed", "canceled") else None

    return wait_until(done, timeout, f"job {job_id} to end", 0.1)


def create_job(client: httpx.Client, doc_ids: list[str], schema: dict[str, Any],
               **options: Any) -> str:
    """Creates a job (it must be accepted) and returns its id."""
    response = client.post("/v1/jobs", json={"document_ids": doc_ids, "schema": schema, **options})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def job_calls(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = client.get(f"/v1/jobs/{job_id}/calls").json()["calls"]
    return calls


def read_http_reply(sock: socket.socket) -> bytes:
    """Reads one HTTP response from a raw socket: its head and, by its Content-Length, its body
    (they may come in separate reads), or whatever came before the peer closed."""
    reply = b""
    while True:
        head, sep, body = reply.partition(b"\r\n\r\n")
        if sep:
            length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            if length is None or len(body) >= int(length.group(1)):
                return reply
        data = sock.recv(65536)
        if not data:
            return reply
        reply += data


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    verified: dict[str, Any] | None


class WebhookReceiver:
    """A real HTTP endpoint that verifies Standard Webhooks signatures with the reference library."""

    def __init__(self, secret: str, fail_first: int = 0, status_on_fail: int = 500) -> None:
        self.secret, self.fail_first, self.status_on_fail = secret, fail_first, status_on_fail
        self.received: list[Received] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    verified = Webhook(receiver.secret).verify(body, headers)
                except Exception:  # noqa: BLE001 - an unverifiable delivery is recorded as such
                    verified = None
                with receiver.lock:
                    receiver.received.append(Received(headers, body, verified))
                    failing = len(receiver.received) <= receiver.fail_first
                self.send_response(receiver.status_on_fail if failing else 204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
