"""The sandbox model server: an OpenAI-compatible peer that behaves like the configured model.

Exact ``usage`` (o200k_base and the profile's image formula), ``context_length_exceeded`` and
rate-limit 429s with the real bodies and headers, a latency model, and fault injection. Its
answers are deterministic, valid against the requested schema and say ``model: sandbox``.
It is a test peer and an offline demo, never a substitute for a real model.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from service.core.profiles import ModelProfile, get_profile
from service.core.prompt import count_request
from service.core.settings import get_settings
from service.core.tokens import count_text, get_encoding
from service.sandbox.answers import build_answer

REFUSE_MARKER = "SANDBOX_REFUSE"


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class SandboxConfig:
    """Every option of the sandbox; each is a ``longdoc sandbox`` flag and a key of
    ``POST /sandbox/config``."""

    profile: str = _opt("gpt-4.1-nano", "model profile to impersonate (window, prices, image rules)")
    ttft_s: float = _opt(0.47, "seconds before the first token (GPT-4.1 nano's seed figure; 0 = "
                         "answer at once)")
    output_tps: float = _opt(144.0, "output tokens per second (0 = no generation time)")
    rpm: int = _opt(0, "requests per minute before 429s (0 = no limit)")
    tpm: int = _opt(0, "tokens per minute before 429s, charged as max(prompt, max tokens)")
    error_rate: float = _opt(0.0, "share of requests answered 500 or 503")
    slow_rate: float = _opt(0.0, "share of requests that take --slow-s longer")
    slow_s: float = _opt(0.0, "extra seconds of a slow request")
    drop_rate: float = _opt(0.0, "share of requests whose connection breaks mid-answer")
    truncate_rate: float = _opt(0.0, "share of answers cut off with finish_reason 'length' "
                                "(decided by the request's content)")
    seed: int = _opt(0, "seed of every random draw (faults are deterministic per request)")
    api_key: str = _opt("", "accept only this Bearer key; others get the real 401")
    gateway_cost: bool = _opt(False, "add Opper's X-Opper-Cost header (the call's price)")


@dataclass
class Bucket:
    capacity: float
    level: float
    updated: float

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.capacity / 60.0)
        self.updated = now

    def wait_for(self, amount: float) -> float:
        return max(0.0, (amount - self.level) * 60.0 / self.capacity)


@dataclass
class SandboxStats:
    requests: int = 0
    completed: int = 0
    rate_limited: int = 0
    errors: int = 0
    dropped: int = 0
    context_exceeded: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # (unix time, prompt + completion tokens) of each completed call: tokens per minute plots
    completions: list[tuple[float, int]] = field(default_factory=list)
    # (unix time, calls in flight) at every change
    in_flight_series: list[tuple[float, int]] = field(default_factory=list)


class Sandbox:
    def __init__(self, config: SandboxConfig) -> None:
        self.lock = threading.Lock()
        self.configure(config)
        self.seen_prefixes: dict[str, int] = {}

    def configure(self, config: SandboxConfig) -> None:
        with self.lock:
            self.config = config
            # The deployment's profile file applies here too: the sandbox impersonates the
            # model the service is configured for.
            self.profile: ModelProfile = get_profile(
                config.profile, get_settings().model_profiles_file or None)
            now = time.monotonic()
            self.rpm = Bucket(config.rpm, config.rpm, now) if config.rpm else None
            self.tpm = Bucket(config.tpm, config.tpm, now) if config.tpm else None
            self.stats = SandboxStats()
            self.attempts: dict[tuple[str, str], int] = {}

    def attempt_draw(self, body_key: str, fault: str) -> float:
        """The same request's n-th attempt always draws the same number, whatever the timing of
        other requests: faults are deterministic for a test, yet a retry can succeed."""
        with self.lock:
            n = self.attempts[(body_key, fault)] = self.attempts.get((body_key, fault), 0) + 1
        return _content_draw(f"{fault}:{n}:{body_key}", self.config.seed)

    def admit(self, charge: int) -> tuple[bool, float, dict[str, str]]:
        """Charges the rate buckets; returns (admitted, seconds to wait, headers)."""
        with self.lock:
            now = time.monotonic()
            headers: dict[str, str] = {}
            wait = 0.0
            for bucket, amount in ((self.rpm, 1), (self.tpm, charge)):
                if bucket is None:
                    continue
                bucket.refill(now)
                wait = max(wait, bucket.wait_for(amount))
            if wait == 0.0:
                for bucket, amount in ((self.rpm, 1), (self.tpm, charge)):
                    if bucket is not None:
                        bucket.level -= amount
            for bucket, kind in ((self.rpm, "requests"), (self.tpm, "tokens")):
                if bucket is not None:
                    headers[f"x-ratelimit-limit-{kind}"] = str(int(bucket.capacity))
                    headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, int(bucket.level)))
                    reset = bucket.wait_for(bucket.capacity)
                    headers[f"x-ratelimit-reset-{kind}"] = f"{reset:.3f}s"
            return wait == 0.0, wait, headers

    def cached_tokens(self, body: dict[str, Any], prompt_tokens: int) -> int:
        """Prompt caching: the shared prefix (system message and schema) seen before, in 128s."""
        if prompt_tokens < 1024:
            return 0
        messages = body.get("messages", [])
        prefix = {"system": messages[0] if messages else None,
                  "format": body.get("response_format"), "tools": body.get("tools")}
        key = hashlib.sha256(json.dumps(prefix, sort_keys=True).encode()).hexdigest()
        prefix_tokens = count_request({"messages": messages[:1], **{
            k: v for k, v in body.items() if k in ("response_format", "tools")}}, self.profile)
        with self.lock:
            seen = key in self.seen_prefixes
            self.seen_prefixes[key] = prefix_tokens
        if not seen or prefix_tokens < 1024:
            return 0
        return (prefix_tokens // 128) * 128


def _error(status: int, message: str, type_: str, code: str | None, param: str | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param,
                                   "code": code}}, status_code=status, headers=headers)


def _document_text(body: dict[str, Any]) -> str:
    texts = []
    for message in body.get("messages", []):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(p.get("text", "") for p in content if p.get("type") == "text")
    return "\n".join(texts)


def _requested_schema(body: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        return fmt.get("json_schema", {}).get("schema", {}), None
    for tool in body.get("tools") or []:
        return tool["function"].get("parameters", {}), tool["function"]
    return None, None


async def _dropped_body() -> AsyncIterator[bytes]:
    """Starts an answer and breaks the connection in the middle of it."""
    yield b'{"id": "chatcmpl-sandbox", "object": "chat.compl'
    await asyncio.sleep(0.01)
    raise ConnectionAbortedError("sandbox: connection dropped (fault injection)")


def _content_draw(text: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _truncate(text: str, tokens: int) -> str:
    enc = get_encoding()
    return enc.decode(enc.encode_ordinary(text)[:tokens])


def create_sandbox_app(config: SandboxConfig | None = None) -> FastAPI:
    app = FastAPI(title="longdoc sandbox model", docs_url=None, redoc_url=None)
    sandbox = Sandbox(config or SandboxConfig())
    app.state.sandbox = sandbox
    get_encoding()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "model": "sandbox", "profile": sandbox.config.profile}

    @app.get("/sandbox/config")
    def get_config() -> dict[str, Any]:
        return asdict(sandbox.config)

    @app.post("/sandbox/config")
    async def set_config(request: Request) -> dict[str, Any]:
        """Replaces the options (unnamed ones return to their defaults) and resets the stats."""
        sandbox.configure(SandboxConfig(**(await request.json())))
        return asdict(sandbox.config)

    @app.get("/sandbox/stats")
    def stats() -> dict[str, Any]:
        return asdict(sandbox.stats)

    def profile_cost(prompt: int, cached: int, completion: int) -> float:
        return sandbox.profile.cost_usd(prompt, cached, completion)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        stats = sandbox.stats
        stats.requests += 1
        expected = sandbox.config.api_key
        if expected and request.headers.get("authorization") != f"Bearer {expected}":
            return _error(401, "Incorrect API key provided. You can find your API key at "
                          "https://platform.openai.com/account/api-keys.", "invalid_request_error",
                          "invalid_api_key")
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return _error(400, "We could not parse the JSON body of your request.",
                          "invalid_request_error", None)
        cfg, profile = sandbox.config, sandbox.profile
        try:
            prompt_tokens = await asyncio.to_thread(count_request, body, profile)
        except Exception as exc:  # noqa: BLE001 - a malformed part, like the real API's 400
            return _error(400, f"Invalid content: {type(exc).__name__}", "invalid_request_error",
                          None, "messages")
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        if prompt_tokens + (max_tokens or 0) > profile.context_window:
            stats.context_exceeded += 1
            return _error(
                400,
                f"This model's maximum context length is {profile.context_window} tokens. However, "
                f"you requested {prompt_tokens + (max_tokens or 0)} tokens ({prompt_tokens} in the "
                f"messages, {max_tokens or 0} in the completion). Please reduce the length of the "
                "messages or completion.",
                "invalid_request_error", "context_length_exceeded", "messages")
        # OpenAI charges a request against TPM as the larger of its prompt and max_tokens.
        charge = max(prompt_tokens, max_tokens or 0)
        if cfg.tpm and charge > cfg.tpm:
            stats.rate_limited += 1
            return _error(
                429,
                f"Request too large for {profile.name} on tokens per min (TPM): Limit {cfg.tpm}, "
                f"Requested {charge}. The input or output tokens must be reduced in order to run "
                "successfully.", "tokens", "rate_limit_exceeded")
        admitted, wait, headers = sandbox.admit(charge)
        if not admitted:
            stats.rate_limited += 1
            kind = "tokens" if sandbox.tpm is not None and sandbox.tpm.level < charge else "requests"
            headers.update({"retry-after-ms": str(int(wait * 1000) + 1),
                            "retry-after": str(int(wait) + 1)})
            return _error(
                429,
                f"Rate limit reached for {profile.name} on {kind} per min. Please try again in "
                f"{wait:.3f}s.", kind, "rate_limit_exceeded", headers=headers)
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        stats.in_flight_series.append((time.time(), stats.in_flight))
        try:
            return await _answer(body, prompt_tokens, max_tokens, headers)
        finally:
            stats.in_flight -= 1
            stats.in_flight_series.append((time.time(), stats.in_flight))

    async def _answer(body: dict[str, Any], prompt_tokens: int, max_tokens: int | None,
                      headers: dict[str, str]) -> Any:
        cfg, stats = sandbox.config, sandbox.stats
        key = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        if cfg.drop_rate and sandbox.attempt_draw(key, "drop") < cfg.drop_rate:
            stats.dropped += 1
            return StreamingResponse(_dropped_body(), media_type="application/json")
        if cfg.error_rate and (draw := sandbox.attempt_draw(key, "error")) < cfg.error_rate:
            stats.errors += 1
            await asyncio.sleep(cfg.ttft_s)
            status = 503 if draw < cfg.error_rate / 2 else 500
            return _error(status, "The server had an error while processing your request.",
                          "server_error", None)
        schema, function = _requested_schema(body)
        text = _document_text(body)
        system = next((m.get("content") for m in body.get("messages", [])
                       if m.get("role") == "system"), "") or ""
        refusal = REFUSE_MARKER in system
        if refusal:
            answer_text = "I'm sorry, but I can't help with that request."
        elif schema is not None:
            answer_text = json.dumps(build_answer(schema, text), ensure_ascii=False)
        else:
            answer_text = (text.strip().splitlines() or ["(empty)"])[0][:200]
        completion_tokens = count_text(answer_text)
        finish = "stop"
        # Like a real model's answer length, truncation depends on the request, not on timing.
        truncated = cfg.truncate_rate and _content_draw(text, cfg.seed) < cfg.truncate_rate
        if max_tokens is not None and completion_tokens > max_tokens or truncated:
            cut = min(max_tokens or completion_tokens, max(1, completion_tokens // 2))
            answer_text, completion_tokens, finish = _truncate(answer_text, cut), cut, "length"
        delay = cfg.ttft_s + (completion_tokens / cfg.output_tps if cfg.output_tps else 0.0)
        if cfg.slow_rate and sandbox.attempt_draw(key, "slow") < cfg.slow_rate:
            delay += cfg.slow_s
        if delay:
            await asyncio.sleep(delay)
        cached = sandbox.cached_tokens(body, prompt_tokens)
        message: dict[str, Any] = {"role": "assistant", "content": answer_text, "refusal": None}
        if refusal:
            message = {"role": "assistant", "content": None, "refusal": answer_text}
        elif function is not None:
            message = {"role": "assistant", "content": None, "refusal": None, "tool_calls": [{
                "id": "call_" + hashlib.sha1(answer_text.encode()).hexdigest()[:24],
                "type": "function",
                "function": {"name": function["name"], "arguments": answer_text}}]}
            finish = "tool_calls" if finish == "stop" else finish
        if cfg.gateway_cost:
            cost = profile_cost(prompt_tokens, cached, completion_tokens)
            headers = {**headers, "X-Opper-Cost": f"{cost:.10f}"}
        stats.completed += 1
        stats.prompt_tokens += prompt_tokens
        stats.completion_tokens += completion_tokens
        stats.completions.append((time.time(), prompt_tokens + completion_tokens))
        return JSONResponse({
            "id": "chatcmpl-sandbox-" + hashlib.sha1(answer_text.encode()).hexdigest()[:20],
            "object": "chat.completion", "created": int(time.time()), "model": "sandbox",
            "choices": [{"index": 0, "message": message, "finish_reason": finish,
                         "logprobs": None}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens,
                      "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
                      "completion_tokens_details": {"reasoning_tokens": 0}},
            "system_fingerprint": "sandbox",
        }, headers=headers)

    return app
