"""Schemathesis against the running API, every operation (POST /v1/jobs included): generated
requests, valid and not, never get a 5xx. Webhook URLs are drawn from IP literals only, so no
generated request makes the service resolve a name."""

from __future__ import annotations

import copy
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.support.stack import Stack

WEBHOOK_URL = r"^http://127\.0\.0\.[0-9]{1,3}:[0-9]{2,5}/[a-z]{0,8}$"


@pytest.fixture(scope="module")
def api(stack: Stack, tenant: dict[str, str]) -> Any:
    spec = httpx.get(f"{stack.url}/openapi.json", timeout=30).json()
    spec = copy.deepcopy(spec)
    for path in spec["paths"].values():
        for operation in path.values():
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            props = (body or {}).get("schema", {}).get("properties", {})
            if "webhook_url" in props:
                props["webhook_url"] = {"anyOf": [{"type": "string", "pattern": WEBHOOK_URL},
                                                  {"type": "null"}]}
    schema = schemathesis.openapi.from_dict(spec)
    schema.config.update(base_url=stack.url, headers={"Authorization": f"Bearer {tenant['api_key']}"})
    return schema


def _fuzz(operation: Any, seen: list[int]) -> Any:
    @given(case=operation.as_strategy())
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def call(case: Any) -> None:
        response = case.call()
        seen.append(response.status_code)
        case.validate_response(response, checks=[not_a_server_error])

    return call


def test_no_generated_request_gets_a_server_error(api: Any) -> None:
    operations = [result.ok() for result in api.get_all_operations()]
    statuses: dict[str, list[int]] = {}
    for operation in operations:
        _fuzz(operation, statuses.setdefault(f"{operation.method.upper()} {operation.path}", []))()
    assert len(statuses["POST /v1/jobs"]) >= 20, statuses.get("POST /v1/jobs")
    assert len(statuses["POST /v1/documents"]) >= 20, statuses.get("POST /v1/documents")
    assert all(code < 500 for codes in statuses.values() for code in codes)


def test_every_operation_says_what_it_answers(stack: Stack) -> None:
    """Each JSON answer of the published API has its schema in /openapi.json (a client can be
    generated from it), the readiness probe's 503 included."""
    spec = httpx.get(f"{stack.url}/openapi.json", timeout=30).json()
    undescribed = [
        f"{method.upper()} {path} {status}"
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
        for status, response in operation["responses"].items()
        if status.startswith("2") or status == "503"
        for media, content in response.get("content", {}).items()
        if "json" in media and not content.get("schema")]
    assert undescribed == []
    ready = spec["paths"]["/readyz"]["get"]["responses"]
    assert {"200", "503"} <= set(ready)
    assert httpx.get(f"{stack.url}/healthz", timeout=10).json() == {"status": "ok"}
