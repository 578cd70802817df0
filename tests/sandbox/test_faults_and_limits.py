"""Errors the service must tell apart, the rate-limit headers, the window and reasoning tokens."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from service.sandbox.app import go_duration
from tests.sandbox.conftest import chat, error_of, o200k_count, schema_body, serve

GO_DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?s|\d+ms)$")


def test_insufficient_quota_is_a_429_without_retry_after() -> None:
    with serve(fail_with="insufficient_quota") as url:
        response = chat(url, schema_body("hi"))
    assert error_of(response, 429) == {
        "message": "You exceeded your current quota, please check your plan and billing details. "
                   "For more information on this error, read the docs: "
                   "https://platform.openai.com/docs/guides/error-codes/api-errors.",
        "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}
    assert "retry-after" not in response.headers and "retry-after-ms" not in response.headers


def test_model_not_found_is_a_404_and_the_model_is_not_listed() -> None:
    with serve(fail_with="model_not_found") as url:
        response = chat(url, schema_body("hi"))
        listed = httpx.get(f"{url}/v1/models", timeout=10).json()
        retrieved = httpx.get(f"{url}/v1/models/gpt-4.1-nano", timeout=10)
    assert error_of(response, 404) == {
        "message": "The model `gpt-4.1-nano` does not exist or you do not have access to it.",
        "type": "invalid_request_error", "param": None, "code": "model_not_found"}
    assert listed == {"object": "list", "data": []}
    assert error_of(retrieved, 404)["code"] == "model_not_found"


def test_a_wrong_key_gets_the_real_401() -> None:
    with serve(api_key="the-key") as url:
        refused = chat(url, schema_body("hi"), authorization="Bearer another")
        accepted = chat(url, schema_body("hi"), authorization="Bearer the-key")
    assert error_of(refused, 401)["code"] == "invalid_api_key"
    assert accepted.status_code == 200


@pytest.mark.parametrize("seconds, text", [(1, "1s"), (360, "6m0s"), (0.02, "20ms"),
                                           (0.0121, "13ms"), (17.28, "17.28s"),
                                           (3723.5, "1h2m3.5s"), (0, "0s")])
def test_reset_times_are_written_as_go_durations(seconds: float, text: str) -> None:
    # OpenAI's rate-limit guide shows "1s" and "6m0s"; "20ms" is seen in the wild.
    assert go_duration(seconds) == text


def test_a_rate_limited_request_gets_retry_after_in_seconds_and_ms() -> None:
    with serve(rpm=2) as url:
        codes = [chat(url, schema_body("x")) for _ in range(3)]
    assert [c.status_code for c in codes] == [200, 200, 429]
    limited = codes[2]
    error = error_of(limited, 429)
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests"
    assert re.fullmatch(r"Rate limit reached for gpt-4\.1-nano in organization org-sandbox on "
                        r"requests per min \(RPM\): Limit 2, Used 2, Requested 1\. Please try "
                        r"again in \S+\. Visit https://platform\.openai\.com/account/rate-limits "
                        r"to learn more\.", error["message"]), error["message"]
    # Retry-After: whole seconds, at least 1 (openai-openapi, TooManyRequests); retry-after-ms
    # is the SDK's finer header. One request of a 2-per-minute bucket refills within 30 s.
    seconds, ms = int(limited.headers["retry-after"]), int(limited.headers["retry-after-ms"])
    assert 1 <= seconds <= 30 and 0 < ms <= 30_000 and seconds == -(-ms // 1000)
    assert limited.headers["x-ratelimit-limit-requests"] == "2"
    assert limited.headers["x-ratelimit-remaining-requests"] == "0"
    assert GO_DURATION.match(limited.headers["x-ratelimit-reset-requests"])
    assert GO_DURATION.match(codes[0].headers["x-ratelimit-reset-requests"])


def test_a_request_larger_than_the_tpm_limit_is_too_large_not_rate_limited() -> None:
    with serve(tpm=1000) as url:
        response = chat(url, schema_body("x", max_completion_tokens=1001))
    error = error_of(response, 429)
    assert error["message"].startswith("Request too large for gpt-4.1-nano")
    assert "Limit 1000, Requested 1001" in error["message"]
    assert "retry-after" not in response.headers


def test_a_request_over_the_window_gets_context_length_exceeded(nano: str) -> None:
    text = "lorem ipsum dolor sit amet " * 210_000  # about 1.05M tokens
    error = error_of(chat(nano, schema_body(text)))
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    assert error["message"].startswith("This model's maximum context length is 1047576 tokens. "
                                       "However, you requested ")


@pytest.fixture(scope="module")
def luna() -> Iterator[str]:
    with serve(profile="gpt-6-luna") as url:
        yield url


def test_reasoning_tokens_are_reported_inside_completion_tokens(luna: str) -> None:
    body = schema_body("Title: Lease agreement", model="gpt-6-luna")
    answer = chat(luna, body).json()
    usage, content = answer["usage"], answer["choices"][0]["message"]["content"]
    reasoning = usage["completion_tokens_details"]["reasoning_tokens"]
    assert reasoning > 0
    assert usage["completion_tokens"] == reasoning + o200k_count(content)
    off = chat(luna, {**body, "reasoning_effort": "none"}).json()["usage"]
    assert off["completion_tokens_details"]["reasoning_tokens"] == 0
    assert off["completion_tokens"] == o200k_count(content)


def test_reasoning_tokens_count_against_max_completion_tokens(luna: str) -> None:
    body = schema_body("Title: Lease agreement", model="gpt-6-luna")
    full = chat(luna, body).json()["usage"]
    cap = full["completion_tokens"] - 1
    cut = chat(luna, {**body, "max_completion_tokens": cap}).json()
    assert cut["choices"][0]["finish_reason"] == "length"
    assert cut["usage"]["completion_tokens"] == cap
    reasoning = cut["usage"]["completion_tokens_details"]["reasoning_tokens"]
    assert reasoning == full["completion_tokens_details"]["reasoning_tokens"]
    assert o200k_count(cut["choices"][0]["message"]["content"]) <= cap - reasoning
