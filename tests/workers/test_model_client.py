"""The model client against the sandbox over HTTP: bodies fitted to the model (the sandbox
refuses what the API refuses), reasoning tokens read, errors told apart, nothing retried that
cannot succeed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from schemas.strict import check_schema
from service.core.profiles import get_profile
from service.core.prompt import count_request, format_fields, system_text
from service.core.settings import Settings
from tests.sandbox.conftest import serve
from workers.model_client import ModelCallFailed, ModelClient, RequestTooLarge

SCHEMA = check_schema({"type": "object", "required": ["title"],
                       "properties": {"title": {"type": "string"}}})


def client(url: str, model: str = "gpt-4.1-nano", **settings: Any) -> ModelClient:
    config = Settings(model=model, model_base_url=f"{url}/v1", model_api_key="k",
                      model_max_attempts=3, model_max_retry_s=5, **settings)
    return ModelClient(config, profile=get_profile(model))


def body(mode: str = "json_schema", **extra: Any) -> dict[str, Any]:
    """What the request builder sends today: ``temperature: 0`` whatever the model."""
    return {"model": "gpt-4.1-nano",
            "messages": [{"role": "system", "content": system_text(None)},
                         {"role": "user", "content": "Document 1, page 1\nThe Title Page"}],
            **format_fields(SCHEMA, mode), "max_completion_tokens": 400, "temperature": 0, **extra}


def sent(record: Path) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    return [line["body"] for line in lines if line["direction"] == "request"]


def test_a_reasoning_model_gets_no_temperature_and_its_reasoning_tokens_are_read(tmp_path: Path) -> None:
    record = tmp_path / "calls.jsonl"
    with serve(profile="gpt-6-luna", record=str(record)) as url:
        # The sandbox refuses temperature 0 at any effort but "none", as the API does.
        result = client(url, "gpt-6-luna").complete(body())
    assert result.finish_reason == "stop" and result.reasoning_tokens > 0
    assert result.completion_tokens > result.reasoning_tokens
    (request,) = sent(record)
    assert "temperature" not in request and request["reasoning_effort"] == "low"


def test_strict_tools_on_gpt_6_luna_are_sent_without_reasoning(tmp_path: Path) -> None:
    record = tmp_path / "calls.jsonl"
    with serve(profile="gpt-6-luna", record=str(record)) as url:
        result = client(url, "gpt-6-luna").complete(body("tools", reasoning_effort="medium"))
    assert result.tool_arguments is not None and result.reasoning_tokens == 0
    (request,) = sent(record)
    assert request["reasoning_effort"] == "none" and request["parallel_tool_calls"] is False


def test_gpt_4_1_nano_keeps_temperature_0_and_never_gets_a_reasoning_effort(tmp_path: Path) -> None:
    record = tmp_path / "calls.jsonl"
    with serve(record=str(record)) as url:
        # reasoning_effort is an unsupported parameter on 4.1: the sandbox would answer 400.
        result = client(url).complete(body("tools", reasoning_effort="low"))
    assert result.tool_arguments is not None and result.reasoning_tokens == 0
    (request,) = sent(record)
    assert request["temperature"] == 0 and "reasoning_effort" not in request
    assert request["parallel_tool_calls"] is False


def test_the_prediction_of_the_fitted_body_is_what_the_sandbox_reports() -> None:
    with serve(profile="gpt-6-luna") as url:
        luna = client(url, "gpt-6-luna")
        request = body("tools")
        result = luna.complete(request)
    assert result.prompt_tokens == count_request(request, get_profile("gpt-6-luna"))


def test_a_prompt_over_the_window_is_too_large_for_the_context() -> None:
    with serve() as url:
        too_long = body(max_completion_tokens=32_768)
        too_long["messages"][1]["content"] = "word " * 1_020_000
        with pytest.raises(RequestTooLarge) as caught:
            client(url).complete(too_long)
    assert caught.value.reason == "context_length_exceeded"


def test_a_request_above_the_tpm_limit_is_too_large_for_the_minute_and_not_retried() -> None:
    with serve(tpm=100) as url:
        with pytest.raises(RequestTooLarge) as caught:
            client(url).complete(body())
        stats = _stats(url)
    assert caught.value.reason == "tokens_per_minute" and stats["requests"] == 1


@pytest.mark.parametrize("fault, code", [("insufficient_quota", "model_quota_exhausted"),
                                         ("model_not_found", "model_not_found")])
def test_billing_and_missing_model_fail_at_once(fault: str, code: str) -> None:
    with serve(fail_with=fault) as url:
        with pytest.raises(ModelCallFailed) as caught:
            client(url).complete(body())
        stats = _stats(url)
    assert caught.value.code == code and stats["requests"] == 1


def _stats(url: str) -> dict[str, Any]:
    import httpx

    stats: dict[str, Any] = httpx.get(f"{url}/sandbox/stats", timeout=10).json()
    return stats
