"""The ``longdoc`` command: keys, migrations, and every process of the service."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn

import httpx

from service.core.settings import Settings, get_settings
from service.store.db import Database

if TYPE_CHECKING:
    from service.store.keys import KeyInfo
    from service.store.models import Tenant


def _database() -> Database:
    return Database(get_settings().resolved_database_url)


def cmd_keys_create(args: argparse.Namespace) -> int:
    from service.store.keys import create_key

    with _database().unit_of_work() as uow:
        tenant, key = create_key(uow.session, args.tenant)
        out = {"tenant": tenant.name, "api_key": key, "webhook_secret": tenant.webhook_secret}
    print(json.dumps(out))
    return 0


def _limit(kind: type[int] | type[float]) -> Callable[[str], float | None]:
    """A limit's value on the command line: a non-negative number, or ``none`` for no limit."""

    def parse(text: str) -> float | None:
        if text.strip().lower() in ("none", "unlimited"):
            return None
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value < 0 or value != value or value == float("inf"):
            raise argparse.ArgumentTypeError("a limit is a finite number >= 0, or none")
        return value

    return parse


def _grace(hours: float) -> timedelta:
    if hours < 0:
        raise SystemExit("--grace-hours must be >= 0")
    return timedelta(hours=hours)


def _tenant_view(tenant: Tenant, keys: list[KeyInfo], now: datetime) -> dict[str, Any]:
    from service.store.keys import LIMITS

    rotating = tenant.previous_webhook_secret_until
    return {"tenant": tenant.name, "id": tenant.id, "created_at": tenant.created_at.isoformat(),
            "limits": {name: getattr(tenant, name) for name in LIMITS},
            "api_keys": [{"prefix": k.prefix, "created_at": k.created_at.isoformat(),
                          "expires_at": k.expires_at.isoformat() if k.expires_at else None}
                         for k in keys],
            "previous_webhook_secret_until": rotating.isoformat()
            if rotating and rotating > now else None}


def cmd_tenants(args: argparse.Namespace) -> int:
    """Every ``longdoc tenants`` subcommand: one short transaction, JSON on stdout; secrets
    appear only in the output of the command that made them."""
    from sqlalchemy import select

    from service.store import keys
    from service.store.keys import LIMITS
    from service.store.models import Tenant, utcnow

    now = utcnow()
    try:
        with _database().unit_of_work() as uow:
            session = uow.session
            if args.tenants_command == "list":
                out: Any = [_tenant_view(t, keys.keys_of(session, t.id, now), now)
                            for t in session.scalars(select(Tenant).order_by(Tenant.name))]
            elif args.tenants_command == "create":
                tenant, key = keys.create_tenant(session, args.tenant)
                out = {"tenant": tenant.name, "api_key": key,
                       "webhook_secret": tenant.webhook_secret}
            elif args.tenants_command == "set-limits":
                given = {name: getattr(args, name) for name in LIMITS
                         if getattr(args, name) is not _UNSET}
                if not given:
                    print("name at least one limit (longdoc tenants set-limits --help)",
                          file=sys.stderr)
                    return 2
                tenant = keys.set_limits(session, args.tenant, given)
                out = {"tenant": tenant.name, "limits": {n: getattr(tenant, n) for n in LIMITS}}
            elif args.tenants_command == "rotate-key":
                tenant, key, until = keys.rotate_key(session, args.tenant, _grace(args.grace_hours),
                                                     now)
                out = {"tenant": tenant.name, "api_key": key,
                       "previous_keys_valid_until": until.isoformat()}
            else:
                tenant, until = keys.rotate_webhook_secret(session, args.tenant,
                                                           _grace(args.grace_hours), now)
                out = {"tenant": tenant.name, "webhook_secret": tenant.webhook_secret,
                       "previous_secret_valid_until": until.isoformat()}
    except keys.TenantError as exc:
        print(f"longdoc tenants: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2 if args.tenants_command == "list" else None))
    return 0


def cmd_calibration(_: argparse.Namespace) -> int:
    """Predicted against reported prompt tokens, per model (and per purpose: extraction calls
    and merge calls): how exact the accounting is. Only answered calls count: a failed call
    reports nothing, and one whose worker died (unknown) has no reported usage."""
    from sqlalchemy import func, select

    from service.store.models import CallStatus, ModelCall

    error = ModelCall.prompt_tokens - ModelCall.predicted_prompt_tokens
    stats = (func.count(), func.avg(error), func.min(error), func.max(error),
             func.sum(ModelCall.prompt_tokens))
    answered = (ModelCall.predicted_prompt_tokens > 0, ModelCall.status == CallStatus.ANSWERED)
    with _database().unit_of_work() as uow:
        rows = uow.session.execute(
            select(ModelCall.model, *stats).where(*answered).group_by(ModelCall.model)).all()
        by_purpose = uow.session.execute(
            select(ModelCall.model, ModelCall.purpose, *stats).where(*answered)
            .group_by(ModelCall.model, ModelCall.purpose)).all()

    def figures(n: int, avg: float | None, lo: int, hi: int, total: int) -> dict[str, object]:
        return {"calls": n, "mean_error_tokens": round(float(avg or 0), 2),
                "min_error_tokens": lo, "max_error_tokens": hi, "prompt_tokens": total}

    print(json.dumps([{"model": m, **figures(*rest),
                       "by_purpose": {p: figures(*r) for mm, p, *r in by_purpose if mm == m}}
                      for m, *rest in rows], indent=2))
    return 0


def cmd_migrate(_: argparse.Namespace) -> int:
    from service.store.migrate import upgrade

    settings = get_settings()
    settings.ensure_data_dir()
    upgrade()
    return 0


def api_argv(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "service.api.app:create_app", "--factory",
            "--host", host, "--port", str(port), "--no-access-log", "--timeout-graceful-shutdown", "5"]


def worker_argv(queue: str, concurrency: int | None = None, name: str | None = None) -> list[str]:
    settings = get_settings()
    if queue == "model":
        pool = ["-P", "threads", "-c", str(concurrency or settings.model_concurrency)]
    else:
        pool = ["-P", "prefork", "-c", str(concurrency or os.cpu_count() or 2)]
    return [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", queue,
            *pool, "-n", f"{name or queue}-{os.getpid()}@%h", "--without-gossip",
            "--without-mingle", "--loglevel", "INFO"]


def beat_argv() -> list[str]:
    settings = get_settings()
    return [sys.executable, "-m", "celery", "-A", "workers.celery_app", "beat", "--loglevel",
            "WARNING", "-s", str((settings.data_dir / "celerybeat-schedule").resolve())]


def sandbox_argv(host: str, port: int, extra: Sequence[str] = ()) -> list[str]:
    return [sys.executable, "-m", "service.sandbox", "--host", host, "--port", str(port), *extra]


def cmd_api(args: argparse.Namespace) -> NoReturn:
    settings = get_settings()
    os.execv(sys.executable, api_argv(args.host or settings.host, args.port or settings.port))


def cmd_worker(args: argparse.Namespace) -> NoReturn:
    os.execv(sys.executable, worker_argv(args.queue, args.concurrency))


def cmd_beat(_: argparse.Namespace) -> NoReturn:
    os.execv(sys.executable, beat_argv())


def cmd_sandbox(args: argparse.Namespace) -> int:
    try:
        from service.sandbox.cli import main as sandbox_main
    except ImportError:
        print("the sandbox is not installed here (production images leave it out)", file=sys.stderr)
        return 2
    return sandbox_main(args.sandbox_args)


def _wait_http(url: str, timeout: float, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise SystemExit(f"a process exited during start-up: {proc.args!r}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {timeout:.0f} s")


def dev_key(settings: Settings) -> tuple[str, str]:
    """The development key of tenant 'dev', made once and kept (0600) in the data dir: each
    start of `longdoc run` shows the same key instead of minting another."""
    from service.store.keys import create_key, tenant_for_key

    path = settings.ensure_data_dir() / "dev-api-key"
    with _database().unit_of_work() as uow:
        key = path.read_text().strip() if path.exists() else ""
        tenant = tenant_for_key(uow.session, key) if key else None
        fresh = tenant is None
        if tenant is None:
            tenant, key = create_key(uow.session, "dev")
        secret = tenant.webhook_secret
    if fresh:  # written once the key is committed: whoever reads the file can use it
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key + "\n")
    return key, secret


def cmd_run(args: argparse.Namespace) -> int:
    """Starts everything on one machine: API, workers, beat and, without a key, the sandbox."""
    settings = get_settings()
    settings.ensure_data_dir()
    cmd_migrate(args)
    env = dict(os.environ)
    procs: list[subprocess.Popen[bytes]] = []
    sandbox: subprocess.Popen[bytes] | None = None
    sandbox_note = ""
    if not settings.resolved_api_key and not settings.model_base_url:
        sandbox_port = settings.port + 1
        # The sandbox keeps its own model table; a deployment's profile file applies to both.
        extra = ["--profiles-file", str(settings.model_profiles_file)] \
            if settings.model_profiles_file else []
        sandbox = subprocess.Popen(sandbox_argv(settings.host, sandbox_port, extra), env=env)
        procs.append(sandbox)
        env["LONGDOC_MODEL_BASE_URL"] = f"http://{settings.host}:{sandbox_port}/v1"
        sandbox_note = (f"model: SANDBOX at http://{settings.host}:{sandbox_port}/v1 (no API key set:"
                        " answers are synthetic and say model: sandbox)")
        _wait_http(f"http://{settings.host}:{sandbox_port}/healthz", 60, procs)
    procs.append(subprocess.Popen(api_argv(settings.host, settings.port), env=env))
    procs.append(subprocess.Popen(worker_argv("cpu"), env=env))
    # Two workers on one machine: the model worker serves its metrics on the next port.
    model_metrics = str(settings.metrics_port + 1 if settings.metrics_port else 0)
    procs.append(subprocess.Popen(worker_argv("model"),
                                  env={**env, "LONGDOC_METRICS_PORT": model_metrics}))
    procs.append(subprocess.Popen(beat_argv(), env=env))
    url = f"http://{settings.host}:{settings.port}"
    try:
        _wait_http(f"{url}/healthz", 60, procs)
        key, secret = dev_key(settings)
        print(f"\nlongdoc is running at {url}\n  OpenAPI docs: {url}/docs\n"
              f"  development API key (tenant 'dev'): {key}\n  webhook secret: {secret}\n"
              f"  metrics: {url}/metrics, workers on ports {settings.metrics_port} (cpu) and "
              f"{model_metrics} (model) (0: off)\n"
              f"  {sandbox_note or 'model: ' + settings.resolved_base_url}\n"
              "Press Ctrl-C to stop.\n", flush=True)
        stop = False

        def _stop(*_: object) -> None:
            nonlocal stop
            stop = True

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        while not stop:
            if any(p.poll() is not None for p in procs):
                print("a longdoc process exited; stopping the rest", file=sys.stderr)
                break
            time.sleep(0.5)
    finally:
        # The sandbox goes last: workers draining their calls still need their model.
        stop_all([p for p in procs if p is not sandbox], settings.shutdown_grace_s + 15)
        stop_all([sandbox] if sandbox else [], 15)
    return 0


def stop_all(procs: list[subprocess.Popen[bytes]], timeout_s: float) -> None:
    """SIGTERM, then up to ``timeout_s`` to drain (workers finish or hand back what is in
    flight), then SIGKILL."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


_UNSET = object()  # a limit not named on the command line stays as it is


def add_tenant_commands(sub: Any) -> None:
    tenants = sub.add_parser("tenants", help="tenants: keys, webhook secrets, quotas",
                             description="Manage tenants. Keys and secrets are printed once, by "
                             "the command that makes them; only their hashes (keys) are kept.")
    cmds = tenants.add_subparsers(dest="tenants_command", required=True)
    cmds.add_parser("list", help="every tenant with its limits and the first characters of its "
                    "working keys (never a key or a secret)").set_defaults(func=cmd_tenants)
    create = cmds.add_parser("create", help="create a tenant and its first API key (printed "
                             "once, with its webhook secret)")
    create.add_argument("--tenant", required=True, help="the new tenant's name")
    create.set_defaults(func=cmd_tenants)
    limits = cmds.add_parser("set-limits", help="set the tenant's quotas (exceeded: 429 "
                             "quota_exceeded); limits not named stay as they are",
                             description="Set quotas. A value of 'none' removes a limit. Windows "
                             "are UTC days and UTC months; GET /v1/usage shows use against them.")
    limits.add_argument("--tenant", required=True, help="the tenant's name")
    for flag, kind, text in (
            ("--max-concurrent-jobs", int, "jobs queued or running at once"),
            ("--max-pages-per-day", int, "pages read by jobs started in a UTC day (counted when "
             "a job is planned: its documents must have been ingested)"),
            ("--max-tokens-per-day", int, "prompt + completion tokens in a UTC day (a new job is "
             "refused when its planned prompts would pass it)"),
            ("--max-usd-per-month", float, "model cost in US dollars in a UTC month (a new job is "
             "refused when its estimated cost would pass it)")):
        limits.add_argument(flag, type=_limit(kind), default=_UNSET, metavar="N|none",
                            help=text)
    limits.set_defaults(func=cmd_tenants)
    for name, what in (("rotate-key", "a new API key (printed once); the tenant's other keys "
                        "keep working for the grace period, then stop"),
                       ("rotate-webhook-secret", "a new webhook secret (printed once); during "
                        "the grace period deliveries are signed with the old and the new one")):
        rotate = cmds.add_parser(name, help=what)
        rotate.add_argument("--tenant", required=True, help="the tenant's name")
        rotate.add_argument("--grace-hours", type=float, default=24.0,
                            help="hours the old one stays valid (default 24; 0: it stops now)")
        rotate.set_defaults(func=cmd_tenants)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="longdoc", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True)
    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create an API key (and the tenant if new)")
    create.add_argument("--tenant", required=True, help="tenant name (created if new)")
    create.set_defaults(func=cmd_keys_create)
    add_tenant_commands(sub)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=cmd_migrate)
    sub.add_parser("calibration", help="predicted vs reported prompt tokens per model "
                   "(answered calls, extraction and merge)").set_defaults(func=cmd_calibration)
    from service.checks.commands import add_commands as add_check_commands

    add_check_commands(sub)  # models, check: the endpoint against the model profile
    api = sub.add_parser("api", help="run the HTTP API")
    api.add_argument("--host", help="address to listen on (default: $LONGDOC_HOST)")
    api.add_argument("--port", type=int, help="port to listen on (default: $LONGDOC_PORT)")
    api.set_defaults(func=cmd_api)
    worker = sub.add_parser("worker", help="run a Celery worker")
    worker.add_argument("--queue", choices=["cpu", "model"], required=True,
                        help="cpu: parsing and planning; model: model calls and webhooks")
    worker.add_argument("--concurrency", type=int,
                        help="processes (cpu, default: cores) or calls in flight (model, default: "
                        "$LONGDOC_MODEL_CONCURRENCY)")
    worker.set_defaults(func=cmd_worker)
    sub.add_parser("beat", help="run the scheduler").set_defaults(func=cmd_beat)
    sandbox = sub.add_parser("sandbox", add_help=False,
                             help="run the sandbox model server, an offline OpenAI-compatible "
                             "peer (longdoc sandbox --help for its options)")
    sandbox.add_argument("sandbox_args", nargs=argparse.REMAINDER)
    sandbox.set_defaults(func=cmd_sandbox)
    sub.add_parser("run", help="start everything on this machine").set_defaults(func=cmd_run)
    from longdoc.cli import add_commands

    add_commands(sub)  # extract, jobs, documents: the client's commands (longdoc.cli)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    os.umask(0o077)  # the database, stored files and keys are the service user's alone
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sandbox"]:  # its own options, help included, belong to the sandbox
        return cmd_sandbox(argparse.Namespace(sandbox_args=argv[1:]))
    if argv[:1] in (["extract"], ["jobs"], ["documents"]):
        from longdoc.cli import main as client_main

        return client_main(argv)  # the client's own error handling and exit codes
    args = parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
