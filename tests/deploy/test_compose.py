"""The compose files validate against the Compose Specification and keep the start-up rules
that make them come up on the first try. No Docker engine runs here: the files are read, not
started. Each rule is also shown to catch a file that breaks it."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.deploy.checks import (
    COMPOSE_FILES,
    COMPOSE_RULES,
    DOCKER,
    Compose,
    Doc,
    MissingVariable,
    Rule,
    example_env,
    interpolate,
    load_compose,
    load_image,
    merged,
    parse_duration,
    required_variables,
    rule_default_model,
    rule_images_pinned,
    rule_init,
    rule_migrate_first,
    rule_one_beat,
    rule_paths_exist,
    rule_restart_and_health,
    rule_volumes_owned,
    rule_workers_drain,
    schema_errors,
)


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_file_is_valid_compose_specification(name: str) -> None:
    compose = load_compose(name)
    assert schema_errors(compose.raw) == []
    # Once interpolated (what Compose runs), too.
    assert schema_errors(compose.doc) == []


@pytest.mark.parametrize("rule", COMPOSE_RULES)
@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_file_keeps_rule(name: str, rule: str) -> None:
    assert COMPOSE_RULES[rule](load_compose(name), load_image()) == []


@pytest.mark.parametrize("rule", COMPOSE_RULES)
@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_file_filled_in_from_env_example_keeps_rule(name: str, rule: str) -> None:
    compose = load_compose(name, example_env())
    assert COMPOSE_RULES[rule](compose, load_image()) == []


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_env_example_names_every_variable_compose_requires(name: str) -> None:
    required = required_variables((DOCKER / name).read_text(encoding="utf-8"))
    assert required, "expected the secrets to be required"
    assert required <= set(example_env())


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_refuses_to_start_without_its_secrets(name: str) -> None:
    text = (DOCKER / name).read_text(encoding="utf-8")
    with pytest.raises(MissingVariable, match="POSTGRES_PASSWORD"):
        Compose.load(name, text, env={})


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_sandbox_demo_points_every_longdoc_process_at_the_sandbox(name: str) -> None:
    compose = load_compose(name, example_env(demo=True))
    sandbox = compose.services["sandbox"]
    assert sandbox["profiles"] == [compose.env["COMPOSE_PROFILES"]]
    command = compose.command("sandbox")
    port = int(command[command.index("--port") + 1])
    for service in compose.app_services():
        url = urlsplit(compose.environment(service)["LONGDOC_MODEL_BASE_URL"])
        assert (url.hostname, url.port, url.path) == ("sandbox", port, "/v1"), service


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_sandbox_is_not_started_by_default(name: str) -> None:
    compose = load_compose(name)
    assert compose.services["sandbox"]["profiles"] == ["sandbox"]
    assert all(not urlsplit(compose.environment(s)["LONGDOC_MODEL_BASE_URL"]).hostname
               for s in compose.app_services())


def test_scaled_shape_runs_two_apis_behind_one_port() -> None:
    compose = load_compose("compose.scale.yaml")
    assert compose.replicas("api") >= 2
    assert "ports" not in compose.services["api"]
    published = [p for s, spec in compose.services.items() for p in spec.get("ports", [])
                 if str(p).endswith(":8000")]
    assert published == ["8000:8000"]
    assert compose.dependencies("proxy") == {"api": "service_healthy"}
    haproxy = (DOCKER / "haproxy.cfg").read_text(encoding="utf-8")
    assert "server-template api 10 api:8000" in haproxy
    assert "uri /readyz" in haproxy
    # Prometheus scrapes each replica directly; the public port does not serve metrics.
    assert "http-request deny deny_status 404 if { path_beg /metrics }" in haproxy


def test_scaled_shape_shares_no_filesystem_between_longdoc_processes() -> None:
    compose = load_compose("compose.scale.yaml")
    env = compose.environment("api")
    assert env["LONGDOC_STORAGE_URL"].startswith("s3://")
    assert env["LONGDOC_BROKER_URL"].startswith("amqp://")
    mounted = {s: compose.volume_targets(s) for s in compose.app_services()}
    assert mounted == {"migrate": [], "api": [], "worker-cpu": [], "worker-model": [],
                       "beat": ["/data"]}
    # The bucket exists before any longdoc process needs it.
    bucket_name = urlsplit(env["LONGDOC_STORAGE_URL"]).hostname or ""
    assert compose.command("bucket") == ["mb", "--ignore-existing", f"store/{bucket_name}"]
    for service in compose.app_services():
        if service != "migrate":
            assert compose.dependencies(service)["bucket"] == "service_completed_successfully"


# --- Each rule catches a file that breaks it ------------------------------------------------

# The smallest compose file that keeps every rule; each case below breaks exactly one.
GOOD = """
name: snippet
x-longdoc: &longdoc
  build: {context: .., dockerfile: docker/Dockerfile, target: runtime}
  environment:
    LONGDOC_MODEL_PRESET: ${LONGDOC_MODEL_PRESET:-opper}
    LONGDOC_MODEL: ${LONGDOC_MODEL:-gpt-4.1-nano}
  volumes: [data:/data]
  init: true
  restart: unless-stopped
  depends_on:
    migrate: {condition: service_completed_successfully}
    postgres: {condition: service_healthy}
services:
  postgres:
    image: postgres:16.15-bookworm
    healthcheck: {test: ["CMD-SHELL", "pg_isready -h 127.0.0.1"]}
    restart: unless-stopped
  migrate:
    <<: *longdoc
    command: ["longdoc", "migrate"]
    restart: "no"
    depends_on: {postgres: {condition: service_healthy}}
  api:
    <<: *longdoc
    command: ["longdoc", "api"]
    healthcheck: {test: ["CMD", "true"]}
  worker-model:
    <<: *longdoc
    command: ["longdoc", "worker", "--queue", "model"]
    stop_grace_period: 5m
  beat:
    <<: *longdoc
    command: ["longdoc", "beat"]
volumes:
  data:
"""

BROKEN: list[Any] = [
    pytest.param(rule_restart_and_health, "services: {worker-model: {restart: null}}",
                 "worker-model: long-running without restart", id="no restart policy"),
    pytest.param(rule_restart_and_health,
                 "services: {beat: {depends_on: {migrate: {condition: service_completed_successfully},"
                 " postgres: {condition: service_started}}}}",
                 "beat: neither a health check nor a healthy dependency", id="no health at all"),
    pytest.param(rule_restart_and_health, "services: {migrate: {restart: unless-stopped}}",
                 "migrate: a one-shot with restart", id="one-shot restarted forever"),
    pytest.param(rule_migrate_first,
                 "services: {api: {depends_on: {migrate: {condition: service_started},"
                 " postgres: {condition: service_healthy}}}}",
                 "api: may start before migrate has completed", id="api races the migration"),
    pytest.param(rule_migrate_first,
                 "services: {migrate: {depends_on: {postgres: {condition: service_started}}}}",
                 "migrate: does not wait for a healthy postgres", id="migration races postgres"),
    pytest.param(rule_volumes_owned, "services: {api: {volumes: ['data:/var/lib/longdoc']}}",
                 "api: /var/lib/longdoc is not created and owned", id="mount point not in the image"),
    pytest.param(rule_default_model,
                 "services: {api: {environment: {LONGDOC_MODEL_PRESET: '${LONGDOC_MODEL_PRESET:-openai}'}}}",
                 "api: default model preset is 'openai'", id="openai preset by default"),
    pytest.param(rule_workers_drain, "services: {worker-model: {stop_grace_period: 30s}}",
                 "worker-model: stop_grace_period 30 s", id="worker killed mid-call"),
    pytest.param(rule_workers_drain, "services: {worker-model: {stop_grace_period: null}}",
                 "worker-model: stop_grace_period 10 s", id="docker's 10 s default"),
    pytest.param(rule_one_beat, "services: {beat: {deploy: {replicas: 2}}}",
                 "beat: 2 schedulers", id="beat scaled"),
    pytest.param(rule_one_beat, "services: {beat: {command: ['longdoc', 'api']}}",
                 "beat: 0 schedulers", id="no beat"),
    pytest.param(rule_init, "services: {worker-model: {init: null}}",
                 "worker-model: no init: true", id="no init process"),
    pytest.param(rule_images_pinned, "services: {postgres: {image: 'postgres:16'}}",
                 "postgres: image 'postgres:16' is not pinned", id="floating tag"),
    pytest.param(rule_images_pinned, "services: {postgres: {image: 'postgres'}}",
                 "postgres: image 'postgres' is not pinned", id="no tag"),
    pytest.param(rule_paths_exist, "services: {api: {volumes: ['./nowhere.cfg:/etc/x.cfg:ro']}}",
                 "api: bind mount source ./nowhere.cfg does not exist", id="missing bind mount"),
]


def _compose(patch: str) -> Compose:
    base: Doc = yaml.safe_load(GOOD)
    doc = merged(base, yaml.safe_load(patch))
    return Compose("snippet", doc, env={})


def test_good_snippet_keeps_every_rule() -> None:
    compose = _compose("{}")
    assert schema_errors(compose.raw) == []
    assert {name: rule(compose, load_image()) for name, rule in COMPOSE_RULES.items()} == \
        {name: [] for name in COMPOSE_RULES}


@pytest.mark.parametrize(("rule", "patch", "expected"), BROKEN)
def test_rule_catches_broken_snippet(rule: Rule, patch: str, expected: str) -> None:
    compose = _compose(patch)
    problems = rule(compose, load_image())
    assert any(p.startswith(expected) for p in problems), problems


def test_schema_catches_broken_snippet() -> None:
    compose = _compose("services: {api: {inits: true, depends_on: {migrate: {condition: done}},"
                       " healthcheck: {retries: [3]}}}")
    errors = "\n".join(schema_errors(compose.raw))
    assert "services/api" in errors
    assert "inits" in errors


@pytest.mark.parametrize(("text", "env", "expected"), [
    ("${A:-x}", {}, "x"), ("${A:-x}", {"A": ""}, "x"), ("${A-x}", {"A": ""}, ""),
    ("${A:+y}", {"A": "1"}, "y"), ("${A:+y}", {}, ""), ("$$A ${A}", {"A": "v"}, "$A v"),
    ("pre-$A-post", {"A": "v"}, "pre-v-post"),
])
def test_interpolation_follows_compose(text: str, env: dict[str, str], expected: str) -> None:
    assert interpolate(text, env) == expected


def test_interpolation_refuses_missing_required_variable() -> None:
    with pytest.raises(MissingVariable, match="S: set it"):
        interpolate("${S:?set it}", {"S": ""})


@pytest.mark.parametrize(("text", "seconds"), [("10s", 10), ("1m30s", 90), ("300s", 300),
                                               ("2h", 7200), ("500ms", 0.5)])
def test_durations_read_as_compose_reads_them(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_duration_refuses_what_compose_refuses() -> None:
    with pytest.raises(ValueError):
        parse_duration("5 minutes")
