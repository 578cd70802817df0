"""A worker's processes as its main process sums them: real forked children writing
prometheus_client's multiprocess files, as a prefork pool's do, and killed -9."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.stack import ROOT

# Runs in a process of its own: the multiprocess directory must be set before the import.
FORKED_CHILD = r"""
import json, os, signal, sys
from service import metrics
from prometheus_client.parser import text_string_to_metric_families

def read():
    out = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for s in family.samples:
            if s.name in ("longdoc_model_calls_in_flight", "longdoc_model_tokens_total"):
                out[s.name] = out.get(s.name, 0) + s.value
    return out

ready_r, ready_w = os.pipe()
pid = os.fork()
if pid == 0:
    metrics.CALLS_IN_FLIGHT.labels("m").inc()
    metrics.TOKENS.labels("m", "prompt").inc(7)
    os.write(ready_w, b"x")
    signal.pause()
os.read(ready_r, 1)
busy = read()
os.kill(pid, signal.SIGKILL)
os.waitpid(pid, 0)
print(json.dumps({"busy": busy, "after_kill": read()}))
"""


def test_a_child_killed_9_leaves_the_live_gauge_and_keeps_its_counts(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", FORKED_CHILD], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["busy"] == {"longdoc_model_calls_in_flight": 1.0, "longdoc_model_tokens_total": 7.0}
    # The dead child's in-flight call is gone (its series with it); its tokens stay counted.
    assert seen["after_kill"].get("longdoc_model_calls_in_flight", 0.0) == 0.0
    assert seen["after_kill"]["longdoc_model_tokens_total"] == 7.0


def test_the_directory_of_a_dead_worker_is_removed_and_a_live_ones_kept(tmp_path: Path) -> None:
    from service.metrics import remove_stale_dirs

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=30)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead_dir = tmp_path / f"longdoc-metrics-{gone.pid}-abc"
        live_dir = tmp_path / f"longdoc-metrics-{alive.pid}-def"
        other = tmp_path / "something-else"
        for path in (dead_dir, live_dir, other):
            path.mkdir()
            (path / "counter_1.db").write_bytes(b"")
        assert remove_stale_dirs(str(tmp_path)) == 1
        assert not dead_dir.exists() and live_dir.exists() and other.exists()
    finally:
        alive.kill()
        alive.wait(timeout=30)
