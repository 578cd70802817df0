"""The sandbox as a peer: the real error bodies and headers the service has to handle."""

import httpx

from tests.support.stack import Stack

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["title"],
          "properties": {"title": {"type": "string"}}}


def _body(text: str, **extra) -> dict:  # type: ignore[no-untyped-def]
    return {"model": "gpt-4.1-nano", "messages": [{"role": "user", "content": text}],
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "x", "schema": SCHEMA, "strict": True}}, **extra}


def test_a_request_over_the_window_gets_context_length_exceeded(stack: Stack) -> None:
    text = "lorem ipsum dolor sit amet " * 210_000  # about 1.05M tokens
    response = httpx.post(f"{stack.sandbox_url}/v1/chat/completions", json=_body(text), timeout=120)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["type"] == "invalid_request_error"
    assert "maximum context length is 1047576 tokens" in error["message"]


def test_answers_are_schema_valid_with_exact_usage_and_say_sandbox(stack: Stack) -> None:
    response = httpx.post(f"{stack.sandbox_url}/v1/chat/completions",
                          json=_body("Title: Lease agreement\nbetween A and B"), timeout=30)
    body = response.json()
    assert body["model"] == "sandbox"
    assert body["choices"][0]["message"]["content"] == '{"title": "Lease agreement"}'
    # 3 + role (1) + content (9) + reply primer 3 + schema wrapper: counted as the service does
    assert body["usage"]["prompt_tokens"] > 16


def test_rate_limits_answer_429_with_the_real_headers(stack: Stack) -> None:
    stack.sandbox(rpm=2)
    try:
        codes = [httpx.post(f"{stack.sandbox_url}/v1/chat/completions", json=_body("x"), timeout=30)
                 for _ in range(3)]
        assert [c.status_code for c in codes] == [200, 200, 429]
        limited = codes[2]
        assert limited.json()["error"]["code"] == "rate_limit_exceeded"
        assert float(limited.headers["retry-after-ms"]) > 0
        assert limited.headers["x-ratelimit-limit-requests"] == "2"
        assert limited.headers["x-ratelimit-remaining-requests"] == "0"
    finally:
        stack.sandbox()
