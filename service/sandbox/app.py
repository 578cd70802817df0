"""The sandbox model server: an OpenAI-compatible peer that plays a model from its own table.

It is the referee of the service's predictions: it counts prompts from the published rules
(``counting.py``), checks requests as the API does (``request.py``, ``strict.py``), answers with
the API's error bodies and rate-limit headers, and reads the pages like a model (``answers.py``,
``oracle.py``). Its answers say ``model: sandbox``; it is a test peer and an offline demo, never
a substitute for a real model. It imports nothing of longdoc's other packages (a test checks).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from service.sandbox.answers import Composer
from service.sandbox.counting import count_prompt
from service.sandbox.errors import OpenAIError
from service.sandbox.models import ModelSpec, get_model
from service.sandbox.oracle import OracleEntry, load_oracle, prompt_pages
from service.sandbox.record import Recorder, RecordMiddleware
from service.sandbox.request import ChatRequest, parse_request
from service.sandbox.tokenizer import count, encoding, truncate

REFUSE_MARKER = "SANDBOX_REFUSE"
FAULTS = ("", "insufficient_quota", "model_not_found")
QUOTA_MESSAGE = ("You exceeded your current quota, please check your plan and billing details. For "
                 "more information on this error, read the docs: "
                 "https://platform.openai.com/docs/guides/error-codes/api-errors.")
LIMITS_URL = "Visit https://platform.openai.com/account/rate-limits to learn more."


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class SandboxConfig:
    """Every option of the sandbox; each is a ``longdoc sandbox`` flag and a key of
    ``POST /sandbox/config``."""

    profile: str = _opt("gpt-4.1-nano", "model to play, from the sandbox's own table (window, output "
                        "cap, prices, image rules, parameters)")
    profiles_file: str = _opt("", "TOML file whose [models.\"id\"] or [profiles.\"id\"] tables add "
                              "models or override fields of shipped ones (a deliberately "
                              "mis-profiled or narrow sandbox)")
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
    fail_with: str = _opt("", "answer every chat completion with this error: insufficient_quota "
                          "(429, no Retry-After) or model_not_found (404)")
    oracle: str = _opt("", "JSON lines {\"match\", \"path\", \"value\"}: answers carry the entries "
                       "whose match occurs in the prompt's pages, in page order ('/-' appends)")
    fabricate_rate: float = _opt(0.0, "share of citations made wrong (another page, an invented "
                                 "quote), chosen by --seed and the oracle entry")
    record: str = _opt("", "append every /v1 request and response to this file as JSON lines "
                       "(image data elided, no API key): what a schema became on the wire")
    seed: int = _opt(0, "seed of every random draw (faults are deterministic per request)")
    api_key: str = _opt("", "accept only this Bearer key; others get the real 401")
    gateway_cost: bool = _opt(False, "add Opper's X-Opper-Cost header (the call's price)")

    def __post_init__(self) -> None:
        if self.fail_with not in FAULTS:
            raise ValueError(f"fail_with must be one of {[f for f in FAULTS if f]}, "
                             f"not {self.fail_with!r}")
        for name in ("error_rate", "slow_rate", "drop_rate", "truncate_rate", "fabricate_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")


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
    invalid: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    oracle_hits: int = 0
    citations: int = 0
    # every citation the sandbox made wrong: the entry, the page it is on and what was cited
    fabricated: list[dict[str, Any]] = field(default_factory=list)
    # (unix time, prompt + completion tokens) of each completed call: tokens per minute plots
    completions: list[tuple[float, int]] = field(default_factory=list)
    # (unix time, calls in flight) at every change
    in_flight_series: list[tuple[float, int]] = field(default_factory=list)


def go_duration(seconds: float) -> str:
    """OpenAI's ``x-ratelimit-reset-*`` format, Go's duration text: "20ms", "1s", "6m0s"."""
    ms = max(0, math.ceil(seconds * 1000))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    text = f"{hours}h" if hours else ""
    if hours or minutes:
        text += f"{minutes}m"
    return text + (f"{rest / 1000:.3f}".rstrip("0").rstrip(".") or "0") + "s"


def _content_draw(text: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class Sandbox:
    def __init__(self, config: SandboxConfig) -> None:
        self.lock = threading.Lock()
        self.startup = config
        self.seen_prefixes: dict[str, int] = {}
        self.configure(config)

    def configure(self, config: SandboxConfig) -> None:
        spec = get_model(config.profile, config.profiles_file or None)
        oracle = load_oracle(config.oracle) if config.oracle else []
        with self.lock:
            self.config, self.spec = config, spec
            self.oracle: list[OracleEntry] = oracle
            self.recorder = Recorder(config.record) if config.record else None
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

    def admit(self, charge: int) -> tuple[str | None, float, dict[str, str]]:
        """Charges the rate buckets; returns (the limit hit or None, seconds to wait, headers)."""
        with self.lock:
            now = time.monotonic()
            headers: dict[str, str] = {}
            wait, hit = 0.0, None
            for bucket, amount, kind in ((self.rpm, 1, "requests"), (self.tpm, charge, "tokens")):
                if bucket is None:
                    continue
                bucket.refill(now)
                if bucket.wait_for(amount) > wait:
                    wait, hit = bucket.wait_for(amount), kind
            if hit is None:
                for bucket, amount in ((self.rpm, 1), (self.tpm, charge)):
                    if bucket is not None:
                        bucket.level -= amount
            for bucket, kind in ((self.rpm, "requests"), (self.tpm, "tokens")):
                if bucket is not None:
                    headers[f"x-ratelimit-limit-{kind}"] = str(int(bucket.capacity))
                    headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, int(bucket.level)))
                    headers[f"x-ratelimit-reset-{kind}"] = go_duration(
                        bucket.wait_for(bucket.capacity))
            return hit, wait, headers

    def cached_tokens(self, request: ChatRequest, prompt_tokens: int) -> int:
        """Prompt caching: the shared prefix (schema and system message) seen before, counted in
        128-token steps from 1024 (OpenAI prompt-caching guide)."""
        if prompt_tokens < 1024:
            return 0
        body = request.body
        prefix_body: dict[str, Any] = {"messages": body["messages"][:1],
                       **{k: body[k] for k in ("response_format", "tools") if k in body}}
        key = hashlib.sha256(json.dumps(prefix_body, sort_keys=True).encode()).hexdigest()
        prefix_tokens = count_prompt(prefix_body, self.spec, request.image_tokens(self.spec))
        with self.lock:
            seen = key in self.seen_prefixes
            self.seen_prefixes[key] = prefix_tokens
        if not seen or prefix_tokens < 1024:
            return 0
        return (min(prefix_tokens, prompt_tokens) // 128) * 128


def _error(exc: OpenAIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


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


async def _dropped_body() -> AsyncIterator[bytes]:
    """Starts an answer and breaks the connection in the middle of it."""
    yield b'{"id": "chatcmpl-sandbox", "object": "chat.compl'
    await asyncio.sleep(0.01)
    raise ConnectionAbortedError("sandbox: connection dropped (fault injection)")


def _model_object(spec: ModelSpec) -> dict[str, Any]:
    model: dict[str, Any] = {"id": spec.name, "object": "model", "created": spec.created,
                             "owned_by": spec.owned_by, "context_length": spec.context_window}
    if spec.shutdown_date:
        model["shutdown_date"] = spec.shutdown_date
    return model


def _not_found(model: str) -> OpenAIError:
    return OpenAIError(404, f"The model `{model}` does not exist or you do not have access to it.",
                       code="model_not_found")


@dataclass
class Answer:
    text: str
    visible_tokens: int
    reasoning_tokens: int
    finish: str
    function: dict[str, Any] | None
    refusal: bool


def create_sandbox_app(config: SandboxConfig | None = None) -> FastAPI:
    app = FastAPI(title="longdoc sandbox model", docs_url=None, redoc_url=None)
    sandbox = Sandbox(config or SandboxConfig())
    app.state.sandbox = sandbox
    app.add_middleware(RecordMiddleware, recorder=lambda: sandbox.recorder)
    encoding()

    @app.exception_handler(OpenAIError)
    async def openai_error(request: Request, exc: OpenAIError) -> JSONResponse:
        return _error(exc)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "model": "sandbox", "profile": sandbox.config.profile,
                "figures": sandbox.spec.status}

    @app.get("/sandbox/config")
    def get_config() -> dict[str, Any]:
        return asdict(sandbox.config)

    @app.post("/sandbox/config")
    async def set_config(request: Request) -> Any:
        """Sets the named options; the others return to the values the sandbox started with.
        Resets the stats."""
        try:
            payload = await request.json()
            sandbox.configure(SandboxConfig(**{**asdict(sandbox.startup), **payload}))
        except (TypeError, ValueError, OSError) as exc:
            return JSONResponse({"error": {"message": str(exc), "type": "invalid_request_error",
                                           "param": None, "code": None}}, status_code=400)
        return asdict(sandbox.config)

    @app.get("/sandbox/stats")
    def stats() -> dict[str, Any]:
        return asdict(sandbox.stats)

    def authorize(request: Request) -> None:
        expected = sandbox.config.api_key
        if expected and request.headers.get("authorization") != f"Bearer {expected}":
            raise OpenAIError(401, "Incorrect API key provided. You can find your API key at "
                              "https://platform.openai.com/account/api-keys.",
                              code="invalid_api_key")

    @app.get("/v1/models")
    def list_models(request: Request) -> dict[str, Any]:
        authorize(request)
        gone = sandbox.config.fail_with == "model_not_found"
        return {"object": "list", "data": [] if gone else [_model_object(sandbox.spec)]}

    @app.get("/v1/models/{model_id:path}")
    def get_model_object(model_id: str, request: Request) -> dict[str, Any]:
        authorize(request)
        if model_id != sandbox.spec.name or sandbox.config.fail_with == "model_not_found":
            raise _not_found(model_id)
        return _model_object(sandbox.spec)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        stats = sandbox.stats
        stats.requests += 1
        authorize(request)
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            raise OpenAIError(400, "We could not parse the JSON body of your request. (HINT: This "
                              "likely means you aren't using your HTTP library correctly. The "
                              "OpenAI API expects a JSON payload, but what was sent was not valid "
                              "JSON. If you have trouble figuring out how to fix this, please "
                              "contact us through our help center at help.openai.com.)") from None
        cfg, spec = sandbox.config, sandbox.spec
        if cfg.fail_with == "insufficient_quota":
            # A billing state: no Retry-After, retrying cannot help (openai-openapi: it "may be
            # omitted for 429 responses that require user action").
            raise OpenAIError(429, QUOTA_MESSAGE, type="insufficient_quota",
                              code="insufficient_quota")
        if cfg.fail_with == "model_not_found":
            raise _not_found(str(body.get("model") or "") if isinstance(body, dict) else "")
        try:
            chat = await asyncio.to_thread(parse_request, body, spec)
            prompt_tokens = await asyncio.to_thread(
                count_prompt, chat.body, spec, chat.image_tokens(spec))
        except OpenAIError:
            stats.invalid += 1
            raise
        max_tokens = chat.max_tokens
        if prompt_tokens + (max_tokens or 0) > spec.context_window:
            stats.context_exceeded += 1
            raise OpenAIError(
                400,
                f"This model's maximum context length is {spec.context_window} tokens. However, "
                f"you requested {prompt_tokens + (max_tokens or 0)} tokens ({prompt_tokens} in the "
                f"messages, {max_tokens or 0} in the completion). Please reduce the length of the "
                "messages or completion.", param="messages", code="context_length_exceeded")
        # OpenAI charges a request against TPM as the larger of its prompt and max_tokens.
        charge = max(prompt_tokens, max_tokens or 0)
        if cfg.tpm and charge > cfg.tpm:
            stats.rate_limited += 1
            raise OpenAIError(
                429, f"Request too large for {spec.name} in organization org-sandbox on tokens per "
                f"min (TPM): Limit {cfg.tpm}, Requested {charge}. The input or output tokens must be "
                f"reduced in order to run successfully. {LIMITS_URL}", type="tokens",
                code="rate_limit_exceeded")
        hit, wait, headers = sandbox.admit(charge)
        if hit is not None:
            stats.rate_limited += 1
            bucket = sandbox.tpm if hit == "tokens" else sandbox.rpm
            assert bucket is not None
            limit, asked = int(bucket.capacity), charge if hit == "tokens" else 1
            short = "TPM" if hit == "tokens" else "RPM"
            headers.update({"retry-after-ms": str(math.ceil(wait * 1000)),
                            "retry-after": str(max(1, math.ceil(wait)))})
            raise OpenAIError(
                429, f"Rate limit reached for {spec.name} in organization org-sandbox on {hit} per "
                f"min ({short}): Limit {limit}, Used {limit - max(0, int(bucket.level))}, Requested "
                f"{asked}. Please try again in {go_duration(wait)}. {LIMITS_URL}", type=hit,
                code="rate_limit_exceeded", headers=headers)
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        stats.in_flight_series.append((time.time(), stats.in_flight))
        try:
            return await _respond(chat, prompt_tokens, headers)
        finally:
            stats.in_flight -= 1
            stats.in_flight_series.append((time.time(), stats.in_flight))

    def _compose(chat: ChatRequest, prompt_tokens: int) -> Answer:
        cfg, spec, body = sandbox.config, sandbox.spec, chat.body
        text = _document_text(body)
        system = next((m.get("content") for m in body["messages"]
                       if m.get("role") in ("system", "developer")), "") or ""
        if isinstance(system, str) and REFUSE_MARKER in system:
            answer = "I'm sorry, but I can't help with that request."
            return Answer(answer, count(answer), 0, "stop", None, True)
        if chat.schema is not None:
            composed = Composer(chat.schema, text, prompt_pages(body["messages"]), sandbox.oracle,
                                cfg.seed, cfg.fabricate_rate).compose()
            with sandbox.lock:  # (this runs in a worker thread)
                stats = sandbox.stats
                stats.oracle_hits += composed.hits
                stats.citations += composed.citations
                stats.fabricated.extend(composed.fabricated)
            # Compact, as models write JSON under structured outputs.
            answer = json.dumps(composed.answer, ensure_ascii=False, separators=(",", ":"))
        else:
            answer = (text.strip().splitlines() or ["(empty)"])[0][:200]
        visible = count(answer)
        effort = chat.reasoning_effort
        # Unpublished: how long a model reasons. The sandbox's rule: a fixed share of the answer
        # per effort (docs/sandbox.md), so tests can see reasoning tokens counted and capped.
        reasoning = math.ceil(visible * spec.reasoning_ratio.get(effort, 1.0)) if effort else 0
        finish = "stop"
        # Without max_completion_tokens the model still stops at its output cap or the window.
        cap = chat.max_tokens or min(spec.max_output_tokens, spec.context_window - prompt_tokens)
        # Like a real model's answer length, truncation depends on the request, not on timing.
        if cfg.truncate_rate and _content_draw(text, cfg.seed) < cfg.truncate_rate:
            cut = max(1, visible // 2)
            answer, visible, finish = truncate(answer, cut), cut, "length"
        if reasoning + visible > cap:
            reasoning = min(reasoning, cap)
            visible = cap - reasoning
            answer, finish = truncate(answer, visible) if visible else "", "length"
        return Answer(answer, visible, reasoning, finish, chat.function, False)

    async def _respond(chat: ChatRequest, prompt_tokens: int, headers: dict[str, str]) -> Any:
        cfg, stats, spec = sandbox.config, sandbox.stats, sandbox.spec
        key = hashlib.sha256(json.dumps(chat.body, sort_keys=True).encode()).hexdigest()
        if cfg.drop_rate and sandbox.attempt_draw(key, "drop") < cfg.drop_rate:
            stats.dropped += 1
            return StreamingResponse(_dropped_body(), media_type="application/json")
        if cfg.error_rate and (draw := sandbox.attempt_draw(key, "error")) < cfg.error_rate:
            stats.errors += 1
            await asyncio.sleep(cfg.ttft_s)
            status = 503 if draw < cfg.error_rate / 2 else 500
            raise OpenAIError(status, "The server had an error while processing your request.",
                              type="server_error")
        answer = await asyncio.to_thread(_compose, chat, prompt_tokens)
        completion_tokens = answer.visible_tokens + answer.reasoning_tokens
        delay = cfg.ttft_s + (completion_tokens / cfg.output_tps if cfg.output_tps else 0.0)
        if cfg.slow_rate and sandbox.attempt_draw(key, "slow") < cfg.slow_rate:
            delay += cfg.slow_s
        if delay:
            await asyncio.sleep(delay)
        cached = await asyncio.to_thread(sandbox.cached_tokens, chat, prompt_tokens)
        message: dict[str, Any] = {"role": "assistant", "content": answer.text, "refusal": None}
        finish = answer.finish
        if answer.refusal:
            message = {"role": "assistant", "content": None, "refusal": answer.text}
        elif answer.function is not None:
            message = {"role": "assistant", "content": None, "refusal": None, "tool_calls": [{
                "id": "call_" + hashlib.sha1(answer.text.encode()).hexdigest()[:24],
                "type": "function",
                "function": {"name": answer.function["name"], "arguments": answer.text}}]}
            finish = "tool_calls" if finish == "stop" else finish
        if cfg.gateway_cost:
            cost = spec.cost_usd(prompt_tokens, cached, completion_tokens)
            headers = {**headers, "X-Opper-Cost": f"{cost:.10f}"}
        stats.completed += 1
        stats.prompt_tokens += prompt_tokens
        stats.completion_tokens += completion_tokens
        stats.reasoning_tokens += answer.reasoning_tokens
        stats.completions.append((time.time(), prompt_tokens + completion_tokens))
        digest = hashlib.sha1(f"{key}:{answer.text}".encode()).hexdigest()
        return JSONResponse({
            "id": "chatcmpl-sandbox-" + digest[:20],
            "object": "chat.completion", "created": int(time.time()), "model": "sandbox",
            "choices": [{"index": 0, "message": message, "finish_reason": finish,
                         "logprobs": None}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens,
                      "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
                      "completion_tokens_details": {"reasoning_tokens": answer.reasoning_tokens,
                                                    "audio_tokens": 0,
                                                    "accepted_prediction_tokens": 0,
                                                    "rejected_prediction_tokens": 0}},
            "service_tier": "default",
            "system_fingerprint": "sandbox",
        }, headers={**headers, "x-request-id": "req_" + digest[20:40]})

    return app

