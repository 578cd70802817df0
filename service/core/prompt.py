"""The request sent to the model, and its exact token count.

The count follows the chat format (openai-cookbook "How to count tokens"): per message a fixed
overhead plus its role and content, plus the reply primer; the schema sent in
``response_format`` (or the function in ``tools``) is counted as its JSON text. Each page is one
content part whose text begins with a header ending in a digit and a newline, which makes its
token count exactly header + page text (o200k's pre-tokenizer cannot merge across that
boundary), so the planner can add up per-page counts made once at ingestion.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from service.core.profiles import ModelProfile
from service.core.tokens import count_text

SYSTEM_PROMPT = (
    "You extract structured data from documents. Read every page you are given and answer with "
    "JSON that matches the requested schema. Take values from the documents only; use null for "
    "a value the pages do not contain, and an empty list when nothing belongs in a list. The "
    "pages may be one part of a longer set of documents: report what this part contains."
)
CITATION_INSTRUCTIONS = (
    "Put the extracted values in data. For every value in data that you take from the pages, "
    "add one entry to sources: the JSON Pointer of the value in data (such as /items/0/amount), "
    "the document and page numbers of the page header it appears under, and a short quote "
    "copied verbatim from that page that shows the value."
)
TOOL_NAME = "record_extraction"
SCHEMA_NAME = "extraction"
FORMAT_OVERHEAD = 8  # wrapper tokens around the schema / function definition


def page_header(document: int, page: int, part: int | None = None, image: bool = False) -> str:
    label = f"Document {document}, page {page}"
    if part is not None:
        label += f", part {part}"
    if image:
        label += ", image 1"  # ends with a digit: see the module docstring
    return label + "\n"


def system_text(instructions: str | None, cited: bool = False) -> str:
    """The system message: the same for every call of a job (a cacheable prefix)."""
    text = f"{SYSTEM_PROMPT}\n\n{CITATION_INSTRUCTIONS}" if cited else SYSTEM_PROMPT
    if instructions:
        return f"{text}\n\nInstructions:\n{instructions.strip()}"
    return text


def format_fields(strict_schema: dict[str, Any], mode: str) -> dict[str, Any]:
    if mode == "tools":
        return {
            "tools": [{"type": "function", "function": {
                "name": TOOL_NAME, "description": "Record the data extracted from the pages.",
                "parameters": strict_schema, "strict": True}}],
            "tool_choice": {"type": "function", "function": {"name": TOOL_NAME}},
        }
    return {"response_format": {"type": "json_schema", "json_schema": {
        "name": SCHEMA_NAME, "schema": strict_schema, "strict": True}}}


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@dataclass
class ImageSizer:
    """How image parts are measured: the profile's formula on the decoded size."""

    profile: ModelProfile

    def tokens_for_url(self, url: str, detail: str) -> int:
        from PIL import Image

        if not url.startswith("data:"):
            # Remote images are never sent by longdoc; count them as the largest image.
            return self.profile.image_tokens(2048, 2048, detail)
        raw = base64.b64decode(url.split(",", 1)[1])
        with Image.open(io.BytesIO(raw)) as img:
            width, height = img.size
        return self.profile.image_tokens(width, height, detail)


def count_content(content: Any, sizer: ImageSizer) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return count_text(content)
    total = 0
    for part in content:
        if part.get("type") == "text":
            total += count_text(part.get("text", ""))
        elif part.get("type") == "image_url":
            image = part.get("image_url", {})
            total += sizer.tokens_for_url(image.get("url", ""), image.get("detail", "auto"))
    return total


# openai-cookbook "How to count tokens with tiktoken", ``num_tokens_for_tools``: the constants
# published for the gpt-4o family (the 4.1 family shares its o200k_base tokenizer; OpenAI
# publishes none of its own). The API reported 101 prompt tokens for the notebook's example.
FUNC_INIT, PROP_INIT, PROP_KEY, ENUM_INIT, ENUM_ITEM, FUNC_END = 7, 3, 3, -3, 3, 12
# A property the cookbook can write as "key:type:description"; anything with structure (nested
# objects, arrays, unions, references) is not published: it is counted as its compact JSON.
_STRUCTURE = ("properties", "items", "anyOf", "$ref", "additionalProperties")


def _without_period(text: str) -> str:
    return text[:-1] if text.endswith(".") else text


def _property_tokens(key: str, prop: Any) -> int:
    prop = prop if isinstance(prop, dict) else {}
    total = PROP_KEY
    if "enum" in prop:
        total += ENUM_INIT + sum(ENUM_ITEM + count_text(v if isinstance(v, str) else _json(v))
                                 for v in prop["enum"])
    kind = prop.get("type")
    if isinstance(kind, str) and not any(k in prop for k in _STRUCTURE):
        written = kind
    else:
        written = _json({k: v for k, v in prop.items() if k not in ("description", "enum")})
    return total + count_text(f"{key}:{written}:{_without_period(str(prop.get('description', '')))}")


def count_functions(functions: list[dict[str, Any]]) -> int:
    if not functions:
        return 0
    total = FUNC_END
    for function in functions:
        total += FUNC_INIT + count_text(
            f"{function.get('name', '')}:{_without_period(str(function.get('description', '')))}")
        parameters = function.get("parameters") or {}
        props = parameters.get("properties") or {}
        if props:
            total += PROP_INIT + sum(_property_tokens(k, v) for k, v in props.items())
        for defs in ("$defs", "definitions"):
            if parameters.get(defs):
                total += count_text(_json(parameters[defs]))  # not published: compact JSON
    return total


def count_format(body: dict[str, Any]) -> int:
    """The answer's format. The json_schema wrapper's cost is not published: 8 tokens, the name,
    the description and the schema as compact JSON is the working assumption (docs/sandbox.md
    lists it; ``longdoc check`` measures it against a real endpoint)."""
    total = 0
    fmt = body.get("response_format")
    if fmt and fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema", {})
        total += (FORMAT_OVERHEAD + count_text(spec.get("name", ""))
                  + count_text(spec.get("description") or "") + count_text(_json(spec.get("schema", {}))))
    return total + count_functions([tool.get("function", {}) for tool in body.get("tools") or []])


def count_request(body: dict[str, Any], profile: ModelProfile) -> int:
    """Prompt tokens of a chat completions request body, as the model profile bills them."""
    sizer = ImageSizer(profile)
    total = profile.reply_overhead + count_format(body)
    for message in body.get("messages", []):
        total += profile.message_overhead + count_text(message.get("role", ""))
        if message.get("name"):
            total += 1 + count_text(message["name"])
        total += count_content(message.get("content"), sizer)
        for call in message.get("tool_calls") or []:
            total += count_text(_json(call.get("function", {})))
    return total


def fixed_overhead(
    profile: ModelProfile, instructions: str | None, strict_schema: dict[str, Any], mode: str,
    cited: bool = False,
) -> int:
    """Tokens of a request with an empty document message: what every call pays besides pages."""
    return _fixed_overhead(profile, instructions, json.dumps(strict_schema), mode, cited)


@lru_cache(maxsize=1024)
def _fixed_overhead(profile: ModelProfile, instructions: str | None, schema_json: str, mode: str,
                    cited: bool) -> int:
    body = {"messages": [{"role": "system", "content": system_text(instructions, cited)},
                         {"role": "user", "content": []}],
            **format_fields(json.loads(schema_json), mode)}
    return count_request(body, profile)
