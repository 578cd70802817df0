"""``longdoc check`` and ``longdoc models`` against real sandbox processes, and the start-up check
of the API and the model workers: a well-profiled sandbox passes, a mis-profiled one fails and
is named, a retired model is refused, a slow endpoint delays nothing for long."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.stack import ROOT, TEST_REDIS_DB, free_port, wait_http, wait_until

CASES = ["text", "image (low)", "image (high)", "image (auto)", "tools", "json_schema"]


class Processes:
    """Processes this test started, each in its own session, stopped at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - owned by the process
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    p = Processes(tmp_path)
    yield p
    p.stop()


def start_sandbox(procs: Processes, *args: str) -> str:
    port = free_port()
    proc = procs.spawn(f"sandbox-{port}", [sys.executable, "-m", "service.sandbox", "--port",
                                           str(port), "--ttft-s", "0", "--output-tps", "0", *args],
                       dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/healthz", 60, [proc])
    return url


def env_for(tmp: Path, sandbox: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "LONGDOC_DATA_DIR": str(tmp / "data"), "LONGDOC_DATABASE_URL": "",
            "LONGDOC_MODEL_BASE_URL": f"{sandbox}/v1", "LONGDOC_MODEL_API_KEY": "sandbox-key",
            "LONGDOC_REDIS_URL": f"redis://127.0.0.1:6379/{TEST_REDIS_DB}",
            "LONGDOC_QUEUE_PREFIX": f"ldtest-{secrets.token_hex(6)}:", "COLUMNS": "200", **extra}


def longdoc(tmp: Path, sandbox: str, args: list[str], **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=300, env=env_for(tmp, sandbox, **extra))


def profiles(tmp: Path, name: str, text: str) -> str:
    path = tmp / name
    path.write_text(text)
    return str(path)


def stats(sandbox: str) -> dict[str, Any]:
    result: dict[str, Any] = httpx.get(f"{sandbox}/sandbox/stats", timeout=10).json()
    return result


def test_without_a_key_or_a_base_url_there_is_nothing_to_check(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENAI_API_KEY", "OPPER_API_KEY") and not k.startswith("LONGDOC_")}
    for command in ("check", "models"):
        out = subprocess.run([sys.executable, "-m", "service.cli", command], cwd=ROOT, text=True,
                             capture_output=True, timeout=120,
                             env={**env, "LONGDOC_DATA_DIR": str(tmp_path / "data")})
        assert out.returncode == 2 and "no model endpoint is configured" in out.stderr


def test_check_passes_against_the_sandbox(tmp_path: Path, procs: Processes) -> None:
    sandbox = start_sandbox(procs)
    out = longdoc(tmp_path, sandbox, ["check", "--json"])
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert [c["case"] for c in report["cases"]] == CASES
    assert all(c["passed"] and c["difference"] == 0 and c["predicted"] > 0 for c in report["cases"])
    assert report["failed"] == [] and report["model"]["listed"] is True
    # Every case was one request, and the sandbox counted each from the published rules.
    assert stats(sandbox)["completed"] == len(CASES)


def test_check_passes_against_the_reported_successor(tmp_path: Path, procs: Processes) -> None:
    sandbox = start_sandbox(procs, "--profile", "gpt-6-luna")
    out = longdoc(tmp_path, sandbox, ["check"], LONGDOC_MODEL="gpt-6-luna")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "reasoning tokens" in out.stdout and "reported figures" in out.stdout


@pytest.mark.parametrize("mis_profile, failing", [
    ("message_overhead = 4", CASES),  # two messages each: +2 tokens in every case
    ("image_multiplier = 2.5", ["image (low)", "image (high)", "image (auto)"]),
])
def test_check_fails_against_a_mis_profiled_sandbox_and_names_the_case(
        tmp_path: Path, procs: Processes, mis_profile: str, failing: list[str]) -> None:
    wrong = profiles(tmp_path, "wrong.toml", f'[models."gpt-4.1-nano"]\n{mis_profile}\n')
    sandbox = start_sandbox(procs, "--profiles-file", wrong)
    out = longdoc(tmp_path, sandbox, ["check"])
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"FAILED: {', '.join(failing)} (tolerance 0 tokens)" in out.stdout
    assert "MISMATCH" in out.stdout
    report = json.loads(longdoc(tmp_path, sandbox, ["check", "--json"]).stdout)
    assert report["failed"] == failing
    assert all(c["reported"] > c["predicted"] for c in report["cases"] if c["case"] in failing)


def test_a_tolerance_lets_a_known_difference_through(tmp_path: Path, procs: Processes) -> None:
    wrong = profiles(tmp_path, "wrong.toml", '[models."gpt-4.1-nano"]\nmessage_overhead = 4\n')
    sandbox = start_sandbox(procs, "--profiles-file", wrong)
    assert longdoc(tmp_path, sandbox, ["check", "--tolerance", "1"]).returncode == 1
    out = longdoc(tmp_path, sandbox, ["check", "--tolerance", "2"])
    assert out.returncode == 0, out.stdout


def test_the_window_probe_says_what_it_costs_and_sends_nothing_without_yes(
        tmp_path: Path, procs: Processes) -> None:
    small = profiles(tmp_path, "small.toml",
                     '[profiles."gpt-4.1-nano"]\ncontext_window = 6000\nmax_output_tokens = 1000\n')
    sandbox = start_sandbox(procs, "--profiles-file", small)
    out = longdoc(tmp_path, sandbox, ["check", "--probe-window"],
                  LONGDOC_MODEL_PROFILES_FILE=small)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "5,984 prompt tokens" in out.stdout and "$0.0012" in out.stdout
    assert "--yes" in out.stdout and stats(sandbox)["requests"] == 0
    out = longdoc(tmp_path, sandbox, ["check", "--probe-window", "--yes", "--json"],
                  LONGDOC_MODEL_PROFILES_FILE=small)
    assert out.returncode == 0, out.stdout + out.stderr
    window = {c["case"]: c for c in json.loads(out.stdout)["cases"]}
    assert window["window (fits)"]["reported"] == 5_984 and window["window (fits)"]["passed"]
    assert "context_length_exceeded" in window["window (+1 token)"]["note"]
    assert stats(sandbox)["context_exceeded"] == 1


@pytest.mark.parametrize("sandbox_window, failing", [(6001, "window (+1 token)"),
                                                     (5999, "window (fits)")])
def test_the_window_probe_finds_a_window_unlike_the_profiles(
        tmp_path: Path, procs: Processes, sandbox_window: int, failing: str) -> None:
    ours = profiles(tmp_path, "ours.toml",
                    '[profiles."gpt-4.1-nano"]\ncontext_window = 6000\nmax_output_tokens = 1000\n')
    theirs = profiles(tmp_path, "theirs.toml", f'[models."gpt-4.1-nano"]\ncontext_window = '
                      f'{sandbox_window}\nmax_output_tokens = 1000\n')
    sandbox = start_sandbox(procs, "--profiles-file", theirs)
    out = longdoc(tmp_path, sandbox, ["check", "--probe-window", "--yes"],
                  LONGDOC_MODEL_PROFILES_FILE=ours)
    assert out.returncode == 1 and f"FAILED: {failing} " in out.stdout, out.stdout


def test_longdoc_models_shows_the_endpoint_beside_the_profile(tmp_path: Path, procs: Processes) -> None:
    narrow = profiles(tmp_path, "narrow.toml", '[models."gpt-4.1-nano"]\ncontext_window = 128000\n'
                      'shutdown_date = "2027-01-14"\n')
    sandbox = start_sandbox(procs, "--profiles-file", narrow)
    out = longdoc(tmp_path, sandbox, ["models", "--json"])
    assert out.returncode == 0, out.stderr
    listing = json.loads(out.stdout)
    (model,) = listing["models"]
    assert model["context_length"] == 128_000 and model["profile_context_window"] == 1_047_576
    assert model["shutdown_date"] == "2027-01-14" and model["profile_shutdown_date"] == "2026-10-23"
    codes = {f["code"] for f in listing["report"]["findings"]}
    assert {"listed", "context_mismatch", "shutdown_announced"} <= codes
    assert not listing["report"]["retired"]
    human = longdoc(tmp_path, sandbox, ["models"]).stdout
    assert "context length of 128,000 tokens, the gpt-4.1-nano profile says 1,047,576" in human
    assert "will shut down on 2027-01-14" in human


def api_argv(port: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "service.api.app:create_app", "--factory",
            "--host", "127.0.0.1", "--port", str(port), "--no-access-log"]


def worker_argv(queue: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", queue,
            "-P", "threads", "-c", "2", "-n", f"{queue}-{secrets.token_hex(3)}@%h",
            "--without-gossip", "--without-mingle", "--loglevel", "INFO"]


def test_the_api_and_model_workers_refuse_a_model_the_endpoint_reports_shut_down(
        tmp_path: Path, procs: Processes) -> None:
    retired = profiles(tmp_path, "retired.toml",
                       '[models."gpt-4.1-nano"]\nshutdown_date = "2026-10-23"\n')
    sandbox = start_sandbox(procs, "--profiles-file", retired)
    env = env_for(tmp_path, sandbox)
    api = procs.spawn("api", api_argv(free_port()), env)
    model = procs.spawn("model", worker_argv("model"), env)
    for name, proc in (("api", api), ("model", model)):
        code = wait_until(proc.poll, 90, f"the {name} process to refuse to start")
        assert code != 0
        log = procs.log(name)
        assert "refusing to start" in log and "shut down on 2026-10-23" in log, log
        assert "LONGDOC_ALLOW_RETIRED_MODEL=1" in log
    # A CPU worker makes no model calls: it does not look.
    cpu = procs.spawn("cpu", worker_argv("cpu"), env)
    wait_until(lambda: "ready." in procs.log("cpu") or cpu.poll() is not None, 90,
               "the CPU worker to be ready")
    assert cpu.poll() is None and "refusing" not in procs.log("cpu")


def test_a_retired_model_starts_when_allowed_and_says_so(tmp_path: Path, procs: Processes) -> None:
    retired = profiles(tmp_path, "retired.toml",
                       '[models."gpt-4.1-nano"]\nshutdown_date = "2026-10-23"\n'
                       'context_window = 128000\n')
    sandbox = start_sandbox(procs, "--profiles-file", retired)
    port = free_port()
    api = procs.spawn("api", api_argv(port), env_for(tmp_path, sandbox,
                                                     LONGDOC_ALLOW_RETIRED_MODEL="1"))
    wait_http(f"http://127.0.0.1:{port}/healthz", 90, [api])
    log = procs.log("api")
    assert "model.check.retired_allowed" in log and "model.check.context_mismatch" in log


def test_an_endpoint_that_never_answers_delays_start_up_only_by_the_check_timeout(
        tmp_path: Path, procs: Processes) -> None:
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        port = free_port()
        api = procs.spawn("api", api_argv(port), env_for(
            tmp_path, endpoint, LONGDOC_MODEL_CHECK_TIMEOUT_S="1"))
        wait_http(f"http://127.0.0.1:{port}/healthz", 90, [api])
    log = procs.log("api")
    assert "model.check.models_unreadable" in log and "no answer within 1 s" in log, log
