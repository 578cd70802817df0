"""``longdoc extract|jobs|documents`` as a user runs them: a real process against the real stack."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

from tests.support.pdfgen import text_pdf
from tests.support.stack import CORPUS, ROOT, Stack

SCHEMA = {"type": "object", "properties": {"title": {"type": "string"},
                                           "topics": {"type": "array", "items": {"type": "string"}}},
          "required": ["title", "topics"]}
FOUR_PAGES = CORPUS / "004-pdflatex-4-pages" / "pdflatex-4-pages.pdf"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


@pytest.fixture
def env(stack: Stack, tenant: dict[str, str]) -> dict[str, str]:
    # Whether stderr is a terminal decides the display, not a CI's forcing variables.
    clean = {k: v for k, v in os.environ.items()
             if k not in ("FORCE_COLOR", "TTY_INTERACTIVE", "TTY_COMPATIBLE", "NO_COLOR")}
    return {**clean, "LONGDOC_URL": stack.url, "LONGDOC_API_KEY": tenant["api_key"]}


@pytest.fixture
def schema_file(tmp_path: Path) -> Path:
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(SCHEMA))
    return path


def longdoc(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=180)


def test_extract_prints_schema_valid_json_and_exits_0(env: dict[str, str], schema_file: Path) -> None:
    out = longdoc(["extract", str(FOUR_PAGES), "--schema", str(schema_file)], env)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    jsonschema.validate(data, SCHEMA)
    # Not a terminal: plain progress lines, no control codes.
    assert "upload pdflatex-4-pages.pdf:" in out.stderr and "succeeded" in out.stderr
    assert "\x1b[" not in out.stderr


def test_a_failing_job_exits_1_with_its_error_code(env: dict[str, str], schema_file: Path) -> None:
    out = longdoc(["extract", str(FOUR_PAGES), "--schema", str(schema_file),
                   "--instructions", "SANDBOX_REFUSE"], env)
    assert out.returncode == 1, out.stderr
    assert "model_refused" in out.stderr and out.stdout == ""


def test_dry_run_prints_the_plan_and_its_cost(env: dict[str, str], schema_file: Path) -> None:
    out = longdoc(["extract", str(FOUR_PAGES), "--schema", str(schema_file), "--dry-run"], env)
    assert out.returncode == 0, out.stderr
    assert "Plan: 1 call(s)" in out.stdout and "estimated cost: $" in out.stdout
    assert "1-4" in out.stdout  # the one call reads pages 1 to 4
    as_json = longdoc(["extract", str(FOUR_PAGES), "--schema", str(schema_file), "--dry-run",
                       "--json"], env)
    plan = json.loads(as_json.stdout)
    assert plan["dry_run"] is True and plan["plan"]["calls"] == 1 and plan["estimated_cost_usd"] > 0


def test_usage_errors_exit_2(env: dict[str, str], schema_file: Path, tmp_path: Path) -> None:
    assert longdoc(["extract", str(FOUR_PAGES)], env).returncode == 2  # no --schema
    missing = longdoc(["extract", str(tmp_path / "nope.pdf"), "--schema", str(schema_file)], env)
    assert missing.returncode == 2 and "no such file" in missing.stderr
    no_key = longdoc(["extract", str(FOUR_PAGES), "--schema", str(schema_file)],
                     {**env, "LONGDOC_API_KEY": ""})
    assert no_key.returncode == 2 and "LONGDOC_API_KEY" in no_key.stderr


def test_options_the_server_does_not_know_show_its_error(env: dict[str, str],
                                                          schema_file: Path) -> None:
    out = longdoc(["extract", str(FOUR_PAGES), "--schema", str(schema_file),
                   "--option", "no_such_option=1"], env)
    assert out.returncode == 1
    assert "invalid_request" in out.stderr and "no_such_option" in out.stderr


def test_no_wait_prints_the_job_id_and_jobs_commands_follow_it(env: dict[str, str],
                                                               schema_file: Path) -> None:
    out = longdoc(["extract", str(FOUR_PAGES), "--schema", str(schema_file), "--no-wait"], env)
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()
    assert job_id.startswith("job_")
    shown = longdoc(["jobs", "show", job_id, "--wait", "--timeout", "60"], env)
    assert shown.returncode == 0 and json.loads(shown.stdout)["status"] == "succeeded"
    result = longdoc(["jobs", "result", job_id], env)
    jsonschema.validate(json.loads(result.stdout), SCHEMA)
    listed = longdoc(["jobs", "list", "--json", "--limit", "100"], env)
    assert job_id in [j["id"] for j in json.loads(listed.stdout)["data"]]
    assert job_id in longdoc(["jobs", "list"], env).stdout  # the table
    document_id = json.loads(shown.stdout)["document_ids"][0]
    doc = json.loads(longdoc(["documents", "show", document_id], env).stdout)
    assert doc["status"] == "ready" and doc["pages"] == doc["pages_parsed"] == 4
    assert document_id in longdoc(["documents", "list"], env).stdout
    missing = longdoc(["jobs", "show", "job_nope"], env)
    assert missing.returncode == 1 and "not_found" in missing.stderr


def test_cancel_from_the_command_line(stack: Stack, env: dict[str, str], schema_file: Path) -> None:
    stack.sandbox(ttft_s=8)
    try:
        job_id = longdoc(["extract", str(FOUR_PAGES), "--schema", str(schema_file), "--no-wait"],
                         env).stdout.strip()
        out = longdoc(["jobs", "cancel", job_id], env)
        assert out.returncode == 0 and json.loads(out.stdout)["status"] == "canceled"
        assert longdoc(["jobs", "show", job_id], env).returncode == 1  # a canceled job
    finally:
        stack.sandbox()


def test_progress_on_a_terminal_shows_pages_chunks_tokens_and_cost(
        stack: Stack, env: dict[str, str], schema_file: Path, tmp_path: Path) -> None:
    """A 12-call job through a pty, as a person at a terminal sees it: live bars on stderr."""
    pdf = tmp_path / "many.pdf"
    pdf.write_bytes(text_pdf(24, lines=40))
    stack.sandbox(ttft_s=0.2)
    argv = [sys.executable, "-m", "service.cli", "extract", str(pdf), "--schema", str(schema_file),
            "--option", "max_tokens_per_call=4096", "--option", "max_output_tokens=256",
            "--out", str(tmp_path / "out.json")]
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.Popen(argv, env={**env, "COLUMNS": "160", "TERM": "xterm"}, cwd=ROOT,
                                stdin=secondary, stdout=subprocess.PIPE, stderr=secondary)
        os.close(secondary)
        screen = b""
        deadline = time.monotonic() + 120
        while proc.poll() is None or select.select([primary], [], [], 0)[0]:
            assert time.monotonic() < deadline, "timed out waiting for the CLI to finish"
            if select.select([primary], [], [], 0.2)[0]:
                try:
                    screen += os.read(primary, 65536)
                except OSError:  # the pty closes when the process has gone
                    break
        assert proc.wait(timeout=10) == 0, screen.decode(errors="replace")
    finally:
        os.close(primary)
        stack.sandbox()
    text = ANSI.sub("", screen.decode(errors="replace"))
    assert "\x1b[" in screen.decode(errors="replace"), "a live display, not plain lines"
    assert re.search(r"chunks\s.*12/12", text), text[-2000:]
    assert re.search(r"ingest doc_\w+.*24/24", text), text[-2000:]
    assert re.search(r"[\d,]+ tokens in, [\d,]+ out, \$\d+\.\d{6}", text)
    jsonschema.validate(json.loads((tmp_path / "out.json").read_text()), SCHEMA)


def test_progress_lines_when_stderr_is_not_a_terminal(stack: Stack, env: dict[str, str],
                                                     schema_file: Path, tmp_path: Path) -> None:
    pdf = tmp_path / "many.pdf"
    pdf.write_bytes(text_pdf(24, lines=40))
    out = longdoc(["extract", str(pdf), "--schema", str(schema_file),
                   "--option", "max_tokens_per_call=4096", "--option", "max_output_tokens=256"], env)
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    assert any(re.fullmatch(r"document doc_\w+: ready, pages 24/24", line) for line in lines), lines
    chunk_lines = [line for line in lines if line.startswith("chunks ")]
    assert chunk_lines[-1].startswith("chunks 12/12, ") and "tokens in" in chunk_lines[-1]
    assert lines[-1].endswith(": succeeded")
