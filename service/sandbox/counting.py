"""Prompt tokens of a chat completions request, from the published rules only.

* Messages: openai-cookbook "How to count tokens with tiktoken", ``num_tokens_from_messages``:
  3 tokens per message, the tokens of every value in it, 1 more for a ``name``, and 3 for the
  reply primer (``<|start|>assistant<|message|>``). The cookbook's API check: 124 tokens for its
  six-message example on gpt-4o and gpt-4o-mini.
* Tools: the same notebook's ``num_tokens_for_tools`` with the gpt-4o family's constants (the
  notebook publishes none for gpt-4.1; it checks 101 tokens for its weather tool on gpt-4o).
* Images: the vision guide's patch and tile methods (``models.py``).

Everything the published formulas do not cover is the sandbox's own assumption, listed in
docs/sandbox.md ("unknown formulas"); each such place below says so.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from service.sandbox.models import ModelSpec
from service.sandbox.tokenizer import count

# num_tokens_for_tools, gpt-4o / gpt-4o-mini constants.
FUNC_INIT, PROP_INIT, PROP_KEY, ENUM_INIT, ENUM_ITEM, FUNC_END = 7, 3, 3, -3, 3, 12
# Assumption: the json_schema wrapper costs 8 tokens besides the name and the schema text.
FORMAT_OVERHEAD = 8
FLAT_EXCLUDES = ("properties", "items", "anyOf", "$ref", "additionalProperties")

ImageCost = Callable[[str, str], int]


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _content_tokens(content: Any, image_cost: ImageCost) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return count(content)
    total = 0
    for part in content:
        kind = part.get("type")
        if kind == "text":
            # Assumption: each text part is tokenized on its own (no separator between parts).
            total += count(part.get("text", ""))
        elif kind == "refusal":
            total += count(part.get("refusal", ""))
        elif kind == "image_url":
            image = part["image_url"]
            total += image_cost(image["url"], image.get("detail") or "auto")
    return total


def _value_tokens(key: str, value: Any, image_cost: ImageCost) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        return count(value)
    if key == "content":
        return _content_tokens(value, image_cost)
    if key == "tool_calls":
        # Assumption: a call costs its function (name and arguments) as compact JSON.
        return sum(count(compact(call.get("function", {}))) for call in value)
    return count(compact(value))  # assumption: any other structured value as compact JSON


def count_messages(messages: list[dict[str, Any]], spec: ModelSpec, image_cost: ImageCost) -> int:
    total = 0
    for message in messages:
        total += spec.message_overhead
        for key, value in message.items():
            total += _value_tokens(key, value, image_cost)
            if key == "name":
                total += spec.name_overhead
    return total + spec.reply_overhead


def _strip_period(text: str) -> str:
    return text[:-1] if text.endswith(".") else text


def _property_tokens(key: str, prop: Any) -> int:
    prop = prop if isinstance(prop, dict) else {}
    total = PROP_KEY
    if "enum" in prop:
        total += ENUM_INIT
        for item in prop["enum"]:
            total += ENUM_ITEM + count(item if isinstance(item, str) else compact(item))
    kind = prop.get("type")
    if isinstance(kind, str) and not any(k in prop for k in FLAT_EXCLUDES):
        p_type = kind
    else:
        # Assumption: a property the cookbook cannot write as "key:type:description" (nested
        # object, array, union, list of types, $ref) costs its schema as compact JSON.
        p_type = compact({k: v for k, v in prop.items() if k not in ("description", "enum")})
    p_desc = _strip_period(str(prop.get("description", "")))
    return total + count(f"{key}:{p_type}:{p_desc}")


def count_functions(functions: list[dict[str, Any]]) -> int:
    """``num_tokens_for_tools`` for a list of function definitions."""
    if not functions:
        return 0
    total = 0
    for function in functions:
        total += FUNC_INIT
        # Assumption: a function without a description is written "name:".
        desc = _strip_period(str(function.get("description", "")))
        total += count(f"{function.get('name', '')}:{desc}")
        parameters = function.get("parameters") or {}
        props = parameters.get("properties") or {}
        if props:
            total += PROP_INIT
            for key, prop in props.items():
                total += _property_tokens(key, prop)
        for defs in ("$defs", "definitions"):
            if parameters.get(defs):
                # Assumption: definitions referenced by $ref cost their compact JSON.
                total += count(compact(parameters[defs]))
    return total + FUNC_END


def count_format(body: dict[str, Any]) -> int:
    fmt = body.get("response_format") or {}
    if fmt.get("type") != "json_schema":
        return 0  # assumption: "text" and "json_object" add nothing
    spec = fmt.get("json_schema") or {}
    # Assumption (what the service assumed before this table existed): 8 tokens, the name, the
    # description if any, and the schema as compact JSON.
    return (FORMAT_OVERHEAD + count(spec.get("name", "")) + count(spec.get("description") or "")
            + count(compact(spec.get("schema", {}))))


def count_prompt(body: dict[str, Any], spec: ModelSpec, image_cost: ImageCost) -> int:
    """Prompt tokens of a validated request; ``tool_choice`` is assumed to cost nothing."""
    functions = [t["function"] for t in body.get("tools") or [] if t.get("type") == "function"]
    functions += list(body.get("functions") or [])
    return (count_messages(body["messages"], spec, image_cost) + count_functions(functions)
            + count_format(body))
