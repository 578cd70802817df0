"""The metric names in docs/deploying.md are the contract between the code that exports them,
the Grafana dashboard and Prometheus' scrape configuration: these tests keep the three in step."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from tests.deploy.checks import DOCKER, REPO, load_compose, load_image

DASHBOARD = DOCKER / "grafana" / "dashboards" / "longdoc.json"
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")
# Labels whose values grow without bound (or leak data) have no place on a metric.
UNBOUNDED_LABELS = {"id", "job_id", "document_id", "tenant", "tenant_id", "path", "url", "key",
                    "api_key", "webhook_url", "error_message"}


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str
    labels: tuple[str, ...]


def documented_metrics() -> dict[str, Metric]:
    """The metrics table of docs/deploying.md."""
    text = (REPO / "docs" / "deploying.md").read_text(encoding="utf-8")
    metrics = {}
    for row in re.findall(r"^\| `(longdoc_\w+)` \| (\w+) \| ([^|]*) \|", text, flags=re.M):
        name, kind, labels = row
        metrics[name] = Metric(name, kind, tuple(re.findall(r"`(\w+)`", labels)))
    return metrics


def naming_problems(metric: Metric) -> list[str]:
    """prometheus.io/docs/practices/naming: prefix, snake case, base units, _total on counters."""
    problems = []
    if not re.fullmatch(r"longdoc_[a-z][a-z0-9_]*[a-z0-9]", metric.name):
        problems.append(f"{metric.name}: not longdoc_snake_case")
    if metric.kind not in ("counter", "gauge", "histogram"):
        problems.append(f"{metric.name}: unknown type {metric.kind}")
    if (metric.kind == "counter") != metric.name.endswith("_total"):
        problems.append(f"{metric.name}: _total is for counters, and every counter has it")
    if metric.kind == "histogram" and not metric.name.endswith(("_seconds", "_bytes")):
        problems.append(f"{metric.name}: a histogram needs a base unit (_seconds, _bytes)")
    if re.search(r"_(ms|milliseconds|minutes|kb|mb|percent)(_|$)", metric.name):
        problems.append(f"{metric.name}: not a base unit")
    for label in metric.labels:
        if label in UNBOUNDED_LABELS or label in ("le", "quantile"):
            problems.append(f"{metric.name}: label {label} is unbounded or reserved")
    return problems


def expressions(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def dashboard_problems(dashboard: dict[str, Any], metrics: dict[str, Metric]) -> list[str]:
    """Every series a panel asks for is documented, and rate() is only taken of what counts."""
    problems = []
    for expr in expressions(dashboard):
        for series in re.findall(r"\blongdoc_\w+", expr):
            base = next((series.removesuffix(s) for s in HISTOGRAM_SERIES
                         if series.endswith(s) and series.removesuffix(s) in metrics), series)
            metric = metrics.get(base)
            if metric is None:
                problems.append(f"{series}: not in docs/deploying.md")
            elif base != series and metric.kind != "histogram":
                problems.append(f"{series}: {base} is a {metric.kind}, not a histogram")
        for series in re.findall(r"\b(?:rate|irate|increase)\(\s*(longdoc_\w+)", expr):
            metric = metrics.get(series)
            if metric is not None and metric.kind == "gauge":
                problems.append(f"{series}: rate() of a gauge")
    return problems


def _dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return dashboard


def test_documented_metrics_follow_prometheus_naming() -> None:
    metrics = documented_metrics()
    assert len(metrics) >= 15
    assert [p for m in metrics.values() for p in naming_problems(m)] == []


@pytest.mark.parametrize(("metric", "expected"), [
    (Metric("longdoc_tasks", "counter", ()), "_total is for counters"),
    (Metric("longdoc_queue_messages_total", "gauge", ()), "_total is for counters"),
    (Metric("longdoc_model_call_latency", "histogram", ()), "a histogram needs a base unit"),
    (Metric("longdoc_wait_ms", "gauge", ()), "not a base unit"),
    (Metric("longdoc_jobs", "gauge", ("status", "job_id")), "label job_id is unbounded"),
    (Metric("LongdocJobs", "gauge", ()), "not longdoc_snake_case"),
])
def test_naming_rule_catches_a_badly_named_metric(metric: Metric, expected: str) -> None:
    assert any(expected in p for p in naming_problems(metric))


def test_dashboard_uses_only_documented_metrics() -> None:
    assert dashboard_problems(_dashboard(), documented_metrics()) == []


@pytest.mark.parametrize(("expr", "expected"), [
    ("sum(rate(longdoc_model_calls_total[5m]))", "longdoc_model_calls_total: not in docs"),
    ("rate(longdoc_queue_messages[5m])", "longdoc_queue_messages: rate() of a gauge"),
    ("longdoc_jobs_bucket", "longdoc_jobs_bucket: longdoc_jobs is a gauge, not a histogram"),
])
def test_dashboard_rule_catches_an_undocumented_or_misused_metric(expr: str, expected: str) -> None:
    broken = {"panels": [{"targets": [{"expr": expr}]}]}
    assert any(p.startswith(expected) for p in dashboard_problems(broken, documented_metrics()))


@pytest.mark.parametrize("topic", [
    "jobs by status", "queue depth", "calls in flight", "latency", "tokens", "dollars", "429",
    "webhook", "pages",
])
def test_dashboard_has_a_panel_for(topic: str) -> None:
    assert any(topic in p["title"].lower() for p in _dashboard()["panels"])


def test_dashboard_panels_fit_the_grid_and_ask_for_their_data_source() -> None:
    dashboard = _dashboard()
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    assert all(p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in panels)
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    assert {p["datasource"]["uid"] for p in panels} == {"${datasource}"}
    assert all(t["expr"] for p in panels for t in p["targets"])


def test_prometheus_scrapes_every_api_and_worker_on_the_port_it_serves() -> None:
    compose = load_compose("compose.scale.yaml")
    config = yaml.safe_load((DOCKER / "prometheus.yml").read_text(encoding="utf-8"))
    scraped = {(name, sd["port"]) for job in config["scrape_configs"]
               for sd in job.get("dns_sd_configs", []) for name in sd["names"]}
    image_env = load_image().last("runtime", "ENV") or ""
    port = re.search(r"LONGDOC_PORT=(\d+)", image_env)
    assert port, "the image sets the API's port"
    api_port = int(port[1])
    expected = set()
    for service in compose.app_services():
        command = compose.command(service)
        if command[-1:] == ["api"]:
            expected.add((service, api_port))
        elif "worker" in command:
            expected.add((service, int(compose.environment(service)["LONGDOC_METRICS_PORT"])))
    assert expected == {("api", 8000), ("worker-cpu", 9808), ("worker-model", 9808)}
    assert expected <= scraped


def test_grafana_is_provisioned_with_the_dashboard_and_prometheus() -> None:
    compose = load_compose("compose.scale.yaml")
    mounts = dict(str(v).split(":")[:2] for v in compose.services["grafana"]["volumes"])
    provisioning = DOCKER / "grafana" / "provisioning"
    provider = yaml.safe_load((provisioning / "dashboards" / "longdoc.yaml").read_text())
    assert mounts["./grafana/dashboards"] == provider["providers"][0]["options"]["path"]
    for kind in ("datasources", "dashboards"):
        assert mounts[f"./grafana/provisioning/{kind}"] == f"/etc/grafana/provisioning/{kind}"
    source = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    assert "prometheus" in compose.services
