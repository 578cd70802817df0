"""The `longdoc` command's own behaviour (the processes it starts are tested end to end)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from tests.support.stack import ROOT


def _run(args: list[str], data_dir: Path) -> str:
    env = {**os.environ, "LONGDOC_DATA_DIR": str(data_dir), "LONGDOC_DATABASE_URL": ""}
    out = subprocess.run([sys.executable, *args], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_longdoc_run_keeps_one_development_key(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _run(["-m", "service.cli", "migrate"], data)
    show = "from service.cli import dev_key; from service.core.settings import get_settings; " \
           "print(dev_key(get_settings())[0])"
    first = _run(["-c", "import os; os.umask(0o077); " + show], data)
    again = _run(["-c", show], data)
    assert first.startswith("ld_") and again == first
    key_file = data / "dev-api-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    key_file.write_text("ld_revoked-or-unknown\n")
    assert _run(["-c", show], data) not in (first, "ld_revoked-or-unknown")


def test_every_command_and_flag_says_what_it_does() -> None:
    """``longdoc --help`` and every ``longdoc COMMAND --help`` describe each command, option and
    argument (the sandbox's own options are checked in tests/sandbox)."""
    import argparse

    from service.cli import parser

    silent: list[str] = []

    def walk(p: argparse.ArgumentParser, path: list[str]) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                described = {choice.dest: choice.help for choice in action._choices_actions}
                for name, command in action.choices.items():
                    if not described.get(name):
                        silent.append(" ".join([*path, name]))
                    if name != "sandbox":
                        walk(command, [*path, name])
            elif not isinstance(action, argparse._HelpAction) and not action.help:
                silent.append(" ".join([*path, "/".join(action.option_strings or [action.dest])]))

    walk(parser(), ["longdoc"])
    assert silent == []
    for command in ("extract", "jobs show", "documents delete", "tenants set-limits", "check"):
        out = subprocess.run([sys.executable, "-m", "service.cli", *command.split(), "--help"],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "usage: longdoc" in out.stdout, out.stderr
