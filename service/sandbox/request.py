"""A chat completions request checked as the API checks it, in the API's words where known.

Parameter names: ``CompletionCreateParams`` of the openai-python SDK (3.57). Error texts:
research notes of this project (model-truth §1.3 and §4), each quoted from an API answer in a
public issue; docs/sandbox.md marks which texts are the sandbox's own.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from service.sandbox.errors import OpenAIError, invalid_value, unsupported_parameter
from service.sandbox.images import ImageInput, read_image
from service.sandbox.models import ModelSpec
from service.sandbox.strict import check_strict

KNOWN_PARAMETERS = frozenset({
    "messages", "model", "audio", "frequency_penalty", "function_call", "functions", "logit_bias",
    "logprobs", "max_completion_tokens", "max_tokens", "metadata", "modalities", "moderation", "n",
    "parallel_tool_calls", "prediction", "presence_penalty", "prompt_cache_key",
    "prompt_cache_options", "prompt_cache_retention", "reasoning_effort", "response_format",
    "safety_identifier", "seed", "service_tier", "stop", "store", "stream", "stream_options",
    "temperature", "tool_choice", "tools", "top_logprobs", "top_p", "user", "verbosity",
    "web_search_options",
})
ROLES = ["system", "assistant", "user", "function", "tool", "developer"]
PART_TYPES = ["text", "image_url", "input_audio", "refusal", "file"]
DETAILS = ["low", "high", "auto"]
# Only with reasoning_effort "none" (OpenAI's GPT-5.2 / 5.4 guides); other values refused.
SAMPLING = ("temperature", "top_p")
LOGPROBS = ("logprobs", "top_logprobs")
SCHEMA_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@dataclass
class ChatRequest:
    body: dict[str, Any]
    model: str
    max_tokens: int | None
    reasoning_effort: str | None
    images: dict[str, ImageInput] = field(default_factory=dict)
    schema: dict[str, Any] | None = None
    function: dict[str, Any] | None = None

    def image_tokens(self, spec: ModelSpec) -> Callable[[str, str], int]:
        """The cost of an image part of this request (images are read once, when checked)."""

        def cost(url: str, detail: str) -> int:
            image = self.images[url]
            return spec.image_tokens(image.width, image.height, detail)
        return cost


def missing(param: str) -> OpenAIError:
    return OpenAIError(400, f"Missing required parameter: '{param}'.", param=param,
                       code="missing_required_parameter")


def _check_parameters(body: dict[str, Any], spec: ModelSpec) -> None:
    unknown = sorted(k for k in body if k not in KNOWN_PARAMETERS)
    if len(unknown) == 1:
        raise OpenAIError(400, f"Unrecognized request argument supplied: {unknown[0]}")
    if unknown:
        raise OpenAIError(400, f"Unrecognized request arguments supplied: {', '.join(unknown)}")
    if not body.get("model"):
        raise OpenAIError(400, "you must provide a model parameter")
    if "messages" not in body:
        raise missing("messages")
    for name in spec.unsupported_parameters:
        if name in body:
            hint = "Use 'max_completion_tokens' instead." if name == "max_tokens" else ""
            raise unsupported_parameter(name, hint)
    if body.get("stream"):
        raise OpenAIError(400, "The sandbox does not stream answers: leave 'stream' out or false.",
                          param="stream", code="sandbox_unsupported")
    if (body.get("n") or 1) != 1:
        raise OpenAIError(400, "The sandbox answers one choice: leave 'n' out or 1.", param="n",
                          code="sandbox_unsupported")


def _max_tokens(body: dict[str, Any], spec: ModelSpec) -> int | None:
    chosen: int | None = None
    for param in ("max_tokens", "max_completion_tokens"):
        value = body.get(param)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise OpenAIError(400, f"Invalid type for '{param}': expected an integer, but got "
                              f"{type(value).__name__} instead.", param=param, code="invalid_type")
        if value < 1:
            raise OpenAIError(400, f"Invalid '{param}': integer below minimum value. Expected a "
                              f"value >= 1, but got {value} instead.", param=param,
                              code="integer_below_min_value")
        if value > spec.max_output_tokens:
            # Verbatim for max_tokens; the same form is assumed for max_completion_tokens.
            raise OpenAIError(400, f"{param} is too large: {value}. This model supports at most "
                              f"{spec.max_output_tokens} completion tokens, whereas you provided "
                              f"{value}.", param=param)
        chosen = value  # max_completion_tokens, read last, wins
    return chosen


def _reasoning(body: dict[str, Any], spec: ModelSpec) -> str | None:
    if not spec.reasoning:
        return None
    effort = body.get("reasoning_effort") or spec.default_reasoning_effort
    if effort not in spec.reasoning_efforts:
        allowed = ", ".join(f"'{e}'" for e in spec.reasoning_efforts[:-1])
        raise OpenAIError(400, f"Unsupported value: '{effort}' is not supported with the "
                          f"'{spec.name}' model. Supported values are: {allowed}, and "
                          f"'{spec.reasoning_efforts[-1]}'.", param="reasoning_effort",
                          code="unsupported_value")
    if effort != "none":
        for name in SAMPLING:
            value = body.get(name)
            if value is not None and value != 1:
                raise OpenAIError(400, f"Unsupported value: '{name}' does not support "
                                  f"{json.dumps(value)} with this model. Only the default (1) value "
                                  "is supported.", param=name, code="unsupported_value")
        for name in LOGPROBS:
            if body.get(name):
                raise unsupported_parameter(name)
        if spec.function_tools_need_effort_none and (body.get("tools") or body.get("functions")):
            raise OpenAIError(400, f"Function tools with reasoning_effort are not supported for "
                              f"{spec.name} in /v1/chat/completions. To use function tools, use "
                              "/v1/responses or set reasoning_effort to 'none'.",
                              param="reasoning_effort")
    return str(effort)


def _check_messages(messages: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    """Checks roles and content parts; returns the image parts (where, image_url)."""
    found = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise OpenAIError(400, f"Invalid type for 'messages[{i}]': expected an object, but got "
                              f"{type(message).__name__} instead.", param=f"messages[{i}]",
                              code="invalid_type")
        role = message.get("role")
        if role not in ROLES:
            raise invalid_value(f"messages[{i}].role", role, ROLES)
        content = message.get("content")
        if content is None and role in ("system", "user", "developer", "tool"):
            raise missing(f"messages[{i}].content")
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            where = f"messages[{i}].content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in PART_TYPES:
                raise invalid_value(f"{where}.type", kind, PART_TYPES)
            if kind in ("input_audio", "file"):
                raise OpenAIError(400, f"The sandbox does not read content parts of type '{kind}'.",
                                  param=f"{where}.type", code="sandbox_unsupported")
            if kind == "text" and not isinstance(part.get("text"), str):
                raise missing(f"{where}.text")
            if kind == "image_url":
                image = part.get("image_url")
                if not isinstance(image, dict) or not isinstance(image.get("url"), str):
                    raise missing(f"{where}.image_url.url")
                detail = image.get("detail") or "auto"
                if detail not in DETAILS:
                    raise invalid_value(f"{where}.image_url.detail", detail, DETAILS)
                found.append((where, image))
    return found


def _images(messages: list[Any], spec: ModelSpec) -> dict[str, ImageInput]:
    parts = _check_messages(messages)
    if len(parts) > spec.max_images:
        raise OpenAIError(400, f"Too many images in request: {len(parts)} were supplied, but at most "
                          f"{spec.max_images} are allowed.", param="messages")
    wire = sum(len(image["url"]) for _, image in parts if image["url"].startswith("data:"))
    if wire > spec.max_image_payload_bytes:
        # Third-party measurement of the API's text (gpt-4.1-mini, 2026-09).
        raise OpenAIError(400, f"Total image size is {wire / 1e6:.2f}MB, which exceeds the allowed "
                          f"limit of {spec.max_image_payload_bytes / 1e6:g}MB.", param="messages")
    return {image["url"]: read_image(image["url"]) for _, image in parts}


def _mentions_json(messages: list[dict[str, Any]]) -> bool:
    for message in messages:
        content = message.get("content")
        texts = [content] if isinstance(content, str) else [
            p.get("text", "") for p in content or [] if isinstance(p, dict)]
        if any("json" in t.lower() for t in texts if isinstance(t, str)):
            return True
    return False


def _response_format(body: dict[str, Any]) -> dict[str, Any] | None:
    fmt = body.get("response_format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        raise invalid_value("response_format.type", kind, ["text", "json_object", "json_schema"])
    if kind == "json_object" and not _mentions_json(body["messages"]):
        raise OpenAIError(400, "'messages' must contain the word 'json' in some form, to use "
                          "'response_format' of type 'json_object'.", param="messages")
    if kind != "json_schema":
        return None
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict):
        raise missing("response_format.json_schema")
    name = spec.get("name")
    if name is None:
        raise missing("response_format.json_schema.name")
    if not isinstance(name, str) or not SCHEMA_NAME.match(name):
        raise OpenAIError(400, "Invalid 'response_format.json_schema.name': string does not match "
                          "pattern. Expected a string that matches the pattern "
                          "'^[a-zA-Z0-9_-]+$'.", param="response_format.json_schema.name",
                          code="invalid_value")
    schema = spec.get("schema") or {}
    if spec.get("strict"):
        check_strict(schema, kind="response_format", name=name, param="response_format", code=None)
    return schema if isinstance(schema, dict) else {}


def _tools(body: dict[str, Any]) -> dict[str, Any] | None:
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not tools:
        if choice is not None:
            raise OpenAIError(400, "Invalid value for 'tool_choice': 'tool_choice' is only allowed "
                              "when 'tools' are specified.", param="tool_choice")
        return None
    functions: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise invalid_value(f"tools[{i}].type", kind, ["function"])
        function = tool.get("function")
        if not isinstance(function, dict) or not function.get("name"):
            raise missing(f"tools[{i}].function.name")
        if function.get("strict"):
            check_strict(function.get("parameters"), kind="function", name=function["name"],
                         param=f"tools[{i}].function.parameters", code="invalid_function_parameters")
        functions.append(function)
    if choice == "none":
        return None
    if isinstance(choice, dict):
        wanted = (choice.get("function") or {}).get("name")
        for function in functions:
            if function["name"] == wanted:
                return function
        raise OpenAIError(400, f"Invalid value for 'tool_choice': no function named '{wanted}' is "
                          "among the supplied tools.", param="tool_choice")
    return functions[0]


def parse_request(body: Any, spec: ModelSpec) -> ChatRequest:
    if not isinstance(body, dict):
        raise OpenAIError(400, "We could not parse the JSON body of your request.")
    _check_parameters(body, spec)
    messages = body["messages"]
    if not isinstance(messages, list):
        raise OpenAIError(400, "Invalid type for 'messages': expected an array, but got "
                          f"{type(messages).__name__} instead.", param="messages", code="invalid_type")
    if not messages:
        raise OpenAIError(400, "Invalid 'messages': empty array. Expected an array with minimum "
                          "length 1, but got an empty array instead.", param="messages",
                          code="empty_array")
    max_tokens = _max_tokens(body, spec)
    effort = _reasoning(body, spec)
    images = _images(messages, spec)
    schema = _response_format(body)
    function = _tools(body)
    if function is not None:
        schema = function.get("parameters") or {}
    return ChatRequest(body=body, model=str(body["model"]), max_tokens=max_tokens,
                       reasoning_effort=effort, images=images, schema=schema, function=function)
