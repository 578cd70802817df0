"""The sandbox served in-process on a loopback port (uvicorn in a thread): real HTTP, no stack."""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import bpe_openai
import httpx
import pytest
import uvicorn
from PIL import Image

from service.sandbox.app import SandboxConfig, create_sandbox_app
from tests.support.stack import free_port, wait_until


@contextmanager
def serve(**options: Any) -> Iterator[str]:
    """A sandbox with these options (instant answers unless told otherwise); yields its URL."""
    config = SandboxConfig(**{"ttft_s": 0.0, "output_tps": 0.0, **options})
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_sandbox_app(config), host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 30, f"the sandbox to listen on port {port}")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="session")
def nano() -> Iterator[str]:
    """The default sandbox: gpt-4.1-nano."""
    with serve() as url:
        yield url


def chat(url: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=120)


def error_of(response: httpx.Response, status: int = 400) -> dict[str, Any]:
    """The error object, after checking the status and that the body has OpenAI's four keys."""
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def image_url(width: int, height: int, fmt: str = "PNG", media_type: str | None = None) -> str:
    """A one-bit image of that size as a data URL (tiny, whatever its dimensions)."""
    out = io.BytesIO()
    Image.new("1" if fmt != "JPEG" else "L", (width, height)).save(out, fmt)
    kind = media_type or f"image/{fmt.lower()}"
    return f"data:{kind};base64,{base64.b64encode(out.getvalue()).decode()}"


def o200k_count(text: str) -> int:
    """An independent o200k_base implementation (bpe-openai's Rust tokenizer), not the sandbox's."""
    return len(bpe_openai.get_encoding("o200k_base").encode(text))


SCHEMA = {"type": "object", "additionalProperties": False, "required": ["title"],
          "properties": {"title": {"type": "string"}}}


def schema_body(text: str, schema: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4.1-nano", "messages": [{"role": "user", "content": text}],
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "x", "schema": schema or SCHEMA, "strict": True}}, **extra}
