"""The sandbox's prompt count against the PUBLISHED worked examples.

Messages and tools: openai-cookbook, examples/How_to_count_tokens_with_tiktoken.ipynb (cells 15
and 17; inputs quoted verbatim, the API reported 124 and 101 tokens on gpt-4o / gpt-4o-mini).
Images: OpenAI vision guide, "Cost calculation examples" (patch: 1024 and 1452 patches; tile:
765, 1105 and 85 tokens for gpt-4o / gpt-4.1).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import pytest

from tests.sandbox.conftest import SCHEMA, chat, image_url, o200k_count, serve

COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate jargon into plain English.",  # noqa: E501 - verbatim
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage.",  # noqa: E501 - verbatim
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]

COOKBOOK_TOOLS = [
  {
    "type": "function",
    "function": {
      "name": "get_current_weather",
      "description": "Get the current weather in a given location",
      "parameters": {
        "type": "object",
        "properties": {
          "location": {
            "type": "string",
            "description": "The city and state, e.g. San Francisco, CA",
          },
          "unit": {"type": "string",
                   "description": "The unit of temperature to return",
                   "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["location"],
      },
    }
  }
]

COOKBOOK_TOOL_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful assistant that can answer to questions about the weather.",
    },
    {
        "role": "user",
        "content": "What's the weather like in San Francisco?",
    },
]


def prompt_tokens(url: str, body: dict[str, Any]) -> int:
    response = chat(url, {"model": "gpt-4.1-nano", **body})
    assert response.status_code == 200, response.text
    return int(response.json()["usage"]["prompt_tokens"])


def image_tokens(url: str, image: str, detail: str = "auto") -> int:
    """Tokens of one image part: the same message with and without it."""
    text = {"type": "text", "text": "Describe the picture."}
    with_image = [text, {"type": "image_url", "image_url": {"url": image, "detail": detail}}]
    return (prompt_tokens(url, {"messages": [{"role": "user", "content": with_image}]})
            - prompt_tokens(url, {"messages": [{"role": "user", "content": [text]}]}))


def test_the_cookbook_six_message_example_counts_124(nano: str) -> None:
    assert prompt_tokens(nano, {"messages": COOKBOOK_MESSAGES, "temperature": 0,
                                "max_tokens": 1}) == 124


def test_the_cookbook_weather_tool_example_counts_101(nano: str) -> None:
    assert prompt_tokens(nano, {"messages": COOKBOOK_TOOL_MESSAGES, "tools": COOKBOOK_TOOLS,
                                "temperature": 0}) == 101
    # The messages alone: 33 (research notes, §2.5, reproduced with js-tiktoken).
    assert prompt_tokens(nano, {"messages": COOKBOOK_TOOL_MESSAGES}) == 33


@pytest.mark.parametrize("size, patches", [((1024, 1024), 1024), ((1800, 2400), 1452)])
def test_patch_images_cost_the_guides_patch_counts_times_the_multiplier(
        nano: str, size: tuple[int, int], patches: int) -> None:
    # gpt-4.1-nano's multiplier is 2.46; "multiply ... and round up" (vision guide).
    assert image_tokens(nano, image_url(*size)) == math.ceil(patches * 2.46)
    assert image_tokens(nano, image_url(*size), "high") == math.ceil(patches * 2.46)


@pytest.fixture(scope="module")
def gpt41() -> Iterator[str]:
    with serve(profile="gpt-4.1") as url:
        yield url


@pytest.mark.parametrize("size, detail, tokens", [((1024, 1024), "high", 765),
                                                  ((2048, 4096), "high", 1105),
                                                  ((4096, 8192), "low", 85)])
def test_tile_images_cost_the_guides_examples(gpt41: str, size: tuple[int, int], detail: str,
                                              tokens: int) -> None:
    assert image_tokens(gpt41, image_url(*size), detail) == tokens


def test_low_detail_on_a_patch_model_bills_a_512_square_at_most(nano: str) -> None:
    """An assumption, not a published figure (docs/sandbox.md): "low" gives the model a
    512 x 512 version, so it costs 16 x 16 patches, or the image's own patches if fewer."""
    assert image_tokens(nano, image_url(1800, 2400), "low") == math.ceil(256 * 2.46)
    assert image_tokens(nano, image_url(64, 64), "low") == math.ceil(4 * 2.46)


def test_the_json_schema_wrapper_costs_8_tokens_the_name_and_the_compact_schema(nano: str) -> None:
    """An assumption, not a published figure (docs/sandbox.md), counted here with an
    independent o200k_base implementation."""
    messages = [{"role": "user", "content": "Title: a lease"}]
    fmt = {"type": "json_schema", "json_schema": {"name": "lease_terms", "schema": SCHEMA,
                                                   "strict": True}}
    compact = json.dumps(SCHEMA, separators=(",", ":"), ensure_ascii=False)
    with_format = prompt_tokens(nano, {"messages": messages, "response_format": fmt})
    assert with_format - prompt_tokens(nano, {"messages": messages}) == \
        8 + o200k_count("lease_terms") + o200k_count(compact)
