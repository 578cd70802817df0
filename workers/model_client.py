"""The one path to the model: the official ``openai`` SDK against an OpenAI-compatible URL.

Retries are ours (the SDK's are off) so they can honour ``retry-after-ms`` / ``retry-after``,
stay within a total time, and tell "try again" apart from "re-plan smaller" and "give up".
Every body is fitted to the model's profile before it leaves (``profiles.fit_request``): no
parameter the model refuses, the effort a reasoning model needs, ``parallel_tool_calls: false``
with strict tools.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai
from openai import OpenAI

from schemas.errors import LongdocError
from service import metrics
from service.core.logs import log
from service.core.profiles import ModelProfile, fit_request, get_profile
from service.core.settings import Settings
from workers.ratelimit import RateLimiter

RETRY_STATUSES = {408, 409, 429, 500, 502, 503, 504}


class ModelCallFailed(LongdocError):
    """A call that will not succeed by retrying it as it is."""


class RequestTooLarge(ModelCallFailed):
    """The request exceeds the window or the TPM limit: re-plan it in smaller chunks.

    ``reason`` says which: ``context_length_exceeded`` or ``tokens_per_minute``."""

    def __init__(self, code: str, message: str, reason: str = "context_length_exceeded") -> None:
        super().__init__(code, message)
        self.reason = reason


@dataclass
class CallResult:
    model: str
    finish_reason: str
    content: str | None
    tool_arguments: str | None
    refusal: str | None
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    gateway_cost_usd: float | None
    # Of completion_tokens, those a reasoning model spent reasoning (``completion_tokens_details``).
    reasoning_tokens: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    latency_ms: int = 0
    attempts: int = 1


def _retry_delay(headers: httpx2.Headers | None, attempt: int) -> float:
    if headers is not None:
        ms = headers.get("retry-after-ms")
        if ms:
            try:
                return float(ms) / 1000.0
            except ValueError:
                pass
        seconds = headers.get("retry-after")
        if seconds:
            try:
                return float(seconds)
            except ValueError:
                pass
    # Exponential backoff with full jitter, capped.
    return random.uniform(0.5, 1.0) * min(30.0, 0.5 * 2.0 ** (attempt - 1))


def _error_code(exc: openai.APIStatusError) -> str | None:
    """The error's code (or type) from an OpenAI-shaped body; the SDK may hand over the body
    or its ``error`` member."""
    body: dict[str, Any] = exc.body if isinstance(exc.body, dict) else {}
    inner = body.get("error")
    error: dict[str, Any] = inner if isinstance(inner, dict) else body
    code = error.get("code") or error.get("type")
    return str(code) if code else None


def _too_large(exc: openai.APIStatusError) -> str | None:
    """Why the request is too large to be sent as it is, or None."""
    body = exc.body if isinstance(exc.body, dict) else {}
    code = body.get("code") or (body.get("error") or {}).get("code")
    message = str(body.get("message") or exc.message)
    if code == "context_length_exceeded":
        return "context_length_exceeded"
    if exc.status_code == 429 and "Request too large" in message:
        return "tokens_per_minute"
    return None


def call_outcome(exc: BaseException) -> str:
    """How one HTTP call ended, as ``longdoc_model_call_duration_seconds`` labels it."""
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code == 429:
            return "rate_limited"
        return "server_error" if exc.status_code >= 500 else "client_error"
    if isinstance(exc, openai.APITimeoutError):  # a subclass of APIConnectionError
        return "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return "connection_error"
    # A 200 whose body is not a chat completion: the endpoint's fault.
    return "server_error"


@contextmanager
def _metered(model: str) -> Iterator[list[str]]:
    """Counts the call in flight while it is, and times it under the outcome the caller sets
    (``outcome[0]``) or the one its exception means."""
    outcome = ["ok"]
    in_flight = metrics.CALLS_IN_FLIGHT.labels(model)
    in_flight.inc()
    sent = time.monotonic()
    try:
        yield outcome
    except BaseException as exc:
        outcome[0] = call_outcome(exc)
        if outcome[0] == "rate_limited":
            metrics.RATE_LIMITED.labels(model).inc()
        raise
    finally:
        in_flight.dec()
        metrics.CALL_SECONDS.labels(model, outcome[0]).observe(time.monotonic() - sent)


class ModelClient:
    def __init__(self, settings: Settings, limiter: RateLimiter | None = None,
                 profile: ModelProfile | None = None) -> None:
        self.settings = settings
        self.limiter = limiter
        self.profile = profile or get_profile(settings.model, settings.model_profiles_file or None)
        self.client = OpenAI(
            base_url=settings.resolved_base_url,
            api_key=settings.resolved_api_key or "sandbox",
            max_retries=0,
            timeout=settings.model_timeout_s,
            http_client=httpx2.Client(
                limits=httpx2.Limits(max_connections=max(64, settings.model_concurrency * 2),
                                    max_keepalive_connections=max(32, settings.model_concurrency)),
                timeout=settings.model_timeout_s),
        )

    def complete(self, body: dict[str, Any], *, prompt_tokens: int = 0) -> CallResult:
        """One call, retried until it succeeds, fails for good, or runs out of attempts or time.

        ``prompt_tokens`` is our exact count: with ``max_tokens`` it is what the call is charged
        against the shared tokens-per-minute budget.
        """
        started = time.monotonic()
        deadline = started + self.settings.model_max_retry_s
        body = fit_request(self.profile, body)
        charge = max(prompt_tokens, int(body.get("max_completion_tokens") or 0))
        model = self.profile.name
        attempt = 0
        while True:
            attempt += 1
            headers = None
            if self.limiter is not None:
                try:
                    waited = self.limiter.acquire(charge)
                except TimeoutError as exc:
                    raise ModelCallFailed("rate_limited", str(exc)) from None
                metrics.RATELIMIT_WAIT.labels(model).observe(waited)
                if waited > 0.05:
                    log.info("model.call.throttled", waited_s=round(waited, 3), charge=charge)
            try:
                with _metered(model) as outcome:
                    # The SDK's generic post: its retries, errors and auth, without
                    # re-validating our already-typed body part by part (~3 ms a call) or
                    # building models.
                    raw = self.client.post("/chat/completions", cast_to=httpx2.Response, body=body)
                    result = self._result(raw, started, attempt)
                    outcome[0] = "length" if result.finish_reason == "length" else "ok"
                self._count_usage(result)
                if self.limiter is not None:
                    self.limiter.observe(result.headers)
                return result
            except openai.APIStatusError as exc:
                too_large = _too_large(exc)
                if too_large:
                    raise RequestTooLarge("request_too_large", exc.message, too_large) from None
                if exc.status_code in (401, 403):
                    raise ModelCallFailed("model_auth_failed",
                                          f"the model endpoint refused the credentials "
                                          f"({exc.status_code})") from None
                code = _error_code(exc)
                if code == "insufficient_quota":
                    # A billing state, not a rate limit: retrying would hold back every worker.
                    raise ModelCallFailed("model_quota_exhausted",
                                          "the model account has no quota left (insufficient_quota): "
                                          "check its plan and billing") from None
                if exc.status_code == 404 or code == "model_not_found":
                    raise ModelCallFailed("model_not_found",
                                          f"the endpoint does not serve the model "
                                          f"{self.settings.resolved_model_id!r} (404)") from None
                if exc.status_code not in RETRY_STATUSES:
                    raise ModelCallFailed("model_request_rejected",
                                          f"{exc.status_code}: {exc.message}"[:500]) from None
                headers, reason = exc.response.headers, f"{exc.status_code}"
            except (openai.APITimeoutError, openai.APIConnectionError) as exc:
                reason = type(exc).__name__
            delay = _retry_delay(headers, attempt)
            if self.limiter is not None and reason == "429":
                # Every worker holds back, not only this one.
                self.limiter.observe(dict(headers or {}), retry_after_s=delay)
            if attempt >= self.settings.model_max_attempts or time.monotonic() + delay > deadline:
                raise ModelCallFailed("model_unavailable",
                                      f"the model did not answer after {attempt} attempts "
                                      f"(last: {reason})")
            log.info("model.call.retry", attempt=attempt, reason=reason, delay_s=round(delay, 3))
            metrics.RETRIES.labels(model, outcome[0]).inc()
            time.sleep(delay)

    def _count_usage(self, result: CallResult) -> None:
        """Tokens and dollars as the endpoint reported them, priced as the job's cost is
        (``settle_call``): the counters add up to the jobs' usage and ``cost_usd``."""
        model = self.profile.name
        metrics.TOKENS.labels(model, "prompt").inc(result.prompt_tokens)
        metrics.TOKENS.labels(model, "cached").inc(result.cached_tokens)
        metrics.TOKENS.labels(model, "completion").inc(result.completion_tokens)
        metrics.COST.labels(model).inc(self.profile.cost_usd(
            result.prompt_tokens, result.cached_tokens, result.completion_tokens))

    def _result(self, raw: httpx2.Response, started: float, attempts: int) -> CallResult:
        try:
            completion = raw.json()
            choice = completion["choices"][0]
            message = choice.get("message") or {}
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ModelCallFailed("model_output_invalid",
                                  f"the endpoint's answer is not a chat completion ({exc})") from None
        usage = completion.get("usage") or {}
        details = usage.get("prompt_tokens_details") or {}
        completion_details = usage.get("completion_tokens_details") or {}
        cost = raw.headers.get("x-opper-cost")
        tool_calls = message.get("tool_calls") or []
        return CallResult(
            model=completion.get("model", ""), finish_reason=choice.get("finish_reason") or "stop",
            content=message.get("content"),
            tool_arguments=tool_calls[0]["function"]["arguments"] if tool_calls else None,
            refusal=message.get("refusal"),
            prompt_tokens=usage.get("prompt_tokens", 0),
            cached_tokens=details.get("cached_tokens") or 0,
            completion_tokens=usage.get("completion_tokens", 0),
            reasoning_tokens=completion_details.get("reasoning_tokens") or 0,
            gateway_cost_usd=float(cost) if cost else None,
            headers={k.lower(): v for k, v in raw.headers.items()
                     if k.lower().startswith("x-ratelimit")},
            latency_ms=int((time.monotonic() - started) * 1000), attempts=attempts,
        )
