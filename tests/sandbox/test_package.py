"""The sandbox as a package of its own: it imports nothing of longdoc's other packages (it is
the referee of their predictions), and every option is documented and settable."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from dataclasses import MISSING, fields

import httpx

from service.sandbox.app import SandboxConfig
from tests.sandbox.conftest import serve
from tests.support.stack import ROOT

SANDBOX = ROOT / "service" / "sandbox"
OURS = ("service", "schemas", "workers")


def imported_modules(source: str, package: tuple[str, ...]) -> list[str]:
    """Absolute names of every module ``source`` imports; ``package`` resolves relative ones."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1])
                names.append(f"{base}.{node.module}" if node.module else base)
            else:
                names.append(node.module or "")
    return names


def test_the_sandbox_imports_nothing_of_the_service() -> None:
    offending = {}
    for path in sorted(SANDBOX.rglob("*.py")):
        package = path.relative_to(ROOT).parent.parts
        bad = [name for name in imported_modules(path.read_text(), package)
               if name.split(".")[0] in OURS and not name.startswith("service.sandbox")]
        if bad:
            offending[str(path.relative_to(ROOT))] = bad
    assert offending == {}
    assert len(list(SANDBOX.rglob("*.py"))) >= 10  # the rule looked at the package


def test_the_import_check_sees_every_kind_of_import() -> None:
    source = ("import workers.tasks\nfrom service.core import tokens\n"
              "from ..core.prompt import page_header\nfrom . import models\n"
              "def f():\n    import schemas.errors\n")
    assert imported_modules(source, ("service", "sandbox")) == [
        "workers.tasks", "service.core", "service.core.prompt", "service.sandbox", "schemas.errors"]


def test_every_option_is_a_flag_with_help() -> None:
    out = subprocess.run([sys.executable, "-m", "service.sandbox", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    text = re.sub(r"\s+", " ", out)
    for f in fields(SandboxConfig):
        assert f"--{f.name.replace('_', '-')}" in text
        help_text = f.metadata["help"]
        assert help_text and re.sub(r"\s+", " ", help_text)[:40] in text, f.name
        assert f.default is not MISSING


def test_options_set_over_http_keep_the_start_up_values_of_the_others() -> None:
    with serve(rpm=7, seed=3) as url:
        changed = httpx.post(f"{url}/sandbox/config", json={"seed": 5}, timeout=10).json()
        refused = httpx.post(f"{url}/sandbox/config", json={"fail_with": "oops"}, timeout=10)
        unknown = httpx.post(f"{url}/sandbox/config", json={"no_such_option": 1}, timeout=10)
    assert (changed["rpm"], changed["seed"]) == (7, 5)
    assert refused.status_code == unknown.status_code == 400
    assert "fail_with" in refused.json()["error"]["message"]


def test_every_option_is_documented() -> None:
    doc = (ROOT / "docs" / "sandbox.md").read_text()
    missing = [f.name for f in fields(SandboxConfig) if f"`--{f.name.replace('_', '-')}`" not in doc]
    assert missing == []
