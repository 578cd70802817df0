"""Strict structured outputs as the API checks them (OpenAI structured-outputs guide,
"Supported schemas"), with its error texts where they are known (docs/sandbox.md lists which
texts are verbatim and which are the sandbox's own wording).

The check is an allowlist: a keyword the guide does not name is refused, as the API refuses
``default``, ``oneOf`` or ``format`` (in its time) with "'X' is not permitted".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.sandbox.errors import OpenAIError

MAX_PROPERTIES = 5000
MAX_DEPTH = 10
MAX_STRING_CHARS = 120_000
MAX_ENUM_VALUES = 1000
LARGE_ENUM = 250
LARGE_ENUM_CHARS = 15_000

COMMON = {"type", "description", "title", "enum", "const", "anyOf", "$ref", "$defs", "definitions"}
OBJECT = {"properties", "required", "additionalProperties"}
STRING = {"pattern", "format", "minLength", "maxLength"}
NUMBER = {"multipleOf", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}
ARRAY = {"items", "minItems", "maxItems"}
ALLOWED = COMMON | OBJECT | STRING | NUMBER | ARRAY
TYPES = {"string", "number", "integer", "boolean", "object", "array", "null"}
FORMATS = {"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"}
ROOT_COMBINATORS = ("oneOf", "anyOf", "allOf", "enum", "not")


@dataclass
class _Tally:
    properties: int = 0
    enum_values: int = 0
    string_chars: int = 0


def _ctx(path: tuple[str, ...]) -> str:
    return f"In context={path!r}"


def _chars(value: Any) -> int:
    return len(value) if isinstance(value, str) else len(str(value))


class _Checker:
    def __init__(self, root: dict[str, Any], fail: Any) -> None:
        self.root, self.fail, self.tally = root, fail, _Tally()

    def resolve(self, ref: str, path: tuple[str, ...]) -> None:
        if ref == "#":
            return
        target: Any = self.root
        for part in ref.removeprefix("#/").split("/") if ref.startswith("#/") else [None]:
            if part is None or not isinstance(target, dict):
                target = None
                break
            target = target.get(part.replace("~1", "/").replace("~0", "~"))
        if target is None:
            self.fail(f"{_ctx(path)}, reference to component '{ref}' which was not found in the "
                      "schema.")

    def node(self, node: Any, path: tuple[str, ...], depth: int) -> None:
        if not isinstance(node, dict):
            self.fail(f"{_ctx(path)}, schema must be a JSON object, got {type(node).__name__}.")
            return
        if "$ref" in node:
            others = sorted(k for k in node if k != "$ref")
            if others:
                listed = ", ".join(repr(k) for k in others)
                self.fail(f"context={path!r}, $ref cannot have keywords {{{listed}}}.")
            self.resolve(str(node["$ref"]), path)
            return
        for key in node:
            if key not in ALLOWED:
                self.fail(f"{_ctx(path)}, '{key}' is not permitted.")
        kinds = node.get("type")
        kinds = kinds if isinstance(kinds, list) else ([] if kinds is None else [kinds])
        for kind in kinds:
            if kind not in TYPES:
                self.fail(f"{_ctx(path)}, '{kind}' is not a valid type.")
        if "format" in node and node["format"] not in FORMATS:
            self.fail(f"{_ctx(path)}, format '{node['format']}' is not permitted.")
        if "enum" in node:
            self.enum(node["enum"], path)
        if "const" in node:
            self.tally.string_chars += _chars(node["const"])
        for key in ("$defs", "definitions"):
            for name, sub in (node.get(key) or {}).items():
                self.tally.string_chars += len(name)
                self.node(sub, (*path, key, name), 1)
        if "anyOf" in node:
            self.any_of(node["anyOf"], path, depth)
        if "object" in kinds or "properties" in node:
            self.object(node, path, depth)
        if "array" in kinds or "items" in node:
            if "items" not in node:
                self.fail(f"{_ctx(path)}, array schema missing items.")
            self.node(node["items"], (*path, "items"), depth)

    def enum(self, values: Any, path: tuple[str, ...]) -> None:
        if not isinstance(values, list) or not values:
            self.fail(f"{_ctx(path)}, 'enum' must be a non-empty array.")
            return
        self.tally.enum_values += len(values)
        size = sum(_chars(v) for v in values)
        self.tally.string_chars += size
        strings = [v for v in values if isinstance(v, str)]
        text = sum(len(v) for v in strings)
        if len(strings) > LARGE_ENUM and text > LARGE_ENUM_CHARS:
            self.fail(f"{_ctx(path)}, enum has {len(strings)} string values with a total length of "
                      f"{text} characters, which exceeds the limit of {LARGE_ENUM_CHARS} for enums "
                      f"with more than {LARGE_ENUM} values.")

    def any_of(self, branches: Any, path: tuple[str, ...], depth: int) -> None:
        if not isinstance(branches, list) or not branches:
            self.fail(f"{_ctx(path)}, 'anyOf' must be a non-empty array.")
            return
        first_keys: set[str] = set()
        for i, branch in enumerate(branches):
            self.node(branch, (*path, "anyOf", str(i)), depth)
            props = branch.get("properties") if isinstance(branch, dict) else None
            if isinstance(props, dict) and props:
                first = next(iter(props))
                if first in first_keys:
                    # Verbatim, with no schema name and no param.
                    raise OpenAIError(
                        400, "Invalid schema: Objects provided via 'anyOf' must not share identical "
                        "first keys. Consider adding a discriminator key or rearranging the "
                        "properties to ensure the first key is unique.")
                first_keys.add(first)

    def object(self, node: dict[str, Any], path: tuple[str, ...], depth: int) -> None:
        if depth > MAX_DEPTH:
            self.fail(f"{depth} levels of nesting exceeds limit of {MAX_DEPTH}.")
        props = node.get("properties", {})
        if not isinstance(props, dict):
            self.fail(f"{_ctx(path)}, 'properties' must be an object.")
            return
        if node.get("additionalProperties", True) is not False:
            self.fail(f"{_ctx(path)}, 'additionalProperties' is required to be supplied and to be "
                      "false.")
        required = node.get("required")
        listed = required if isinstance(required, list) else []
        missing = [name for name in props if name not in listed]
        if required is None or missing:
            name = missing[0] if missing else next(iter(props), "")
            self.fail(f"{_ctx(path)}, 'required' is required to be supplied and to be an array "
                      f"including every key in properties. Missing '{name}'.")
        extra = [name for name in listed if name not in props]
        if extra:
            self.fail(f"{_ctx(path)}, 'required' is required to be supplied and to be an array "
                      f"including every key in properties. Extra required key '{extra[0]}' "
                      "supplied.")
        self.tally.properties += len(props)
        for name, sub in props.items():
            self.tally.string_chars += len(name)
            self.node(sub, (*path, "properties", name), depth + 1)

    def limits(self) -> None:
        t = self.tally
        if t.properties > MAX_PROPERTIES:
            self.fail(f"{t.properties} object properties exceeds limit of {MAX_PROPERTIES}.")
        if t.enum_values > MAX_ENUM_VALUES:
            self.fail(f"{t.enum_values} enum values exceeds limit of {MAX_ENUM_VALUES}.")
        if t.string_chars > MAX_STRING_CHARS:
            self.fail(f"total string length of property names, definition names, enum values and "
                      f"const values is {t.string_chars}, which exceeds limit of "
                      f"{MAX_STRING_CHARS}.")


def check_strict(schema: Any, *, kind: str, name: str, param: str, code: str | None) -> None:
    """Raises the API's 400 for the first rule ``schema`` breaks; ``kind`` is "response_format"
    or "function", as the API names the schema's owner in its messages."""

    def fail(detail: str) -> None:
        raise OpenAIError(400, f"Invalid schema for {kind} '{name}': {detail}", param=param,
                          code=code)

    if not isinstance(schema, dict):
        fail("schema must be a JSON Schema of 'type: \"object\"', got 'type: null'.")
        return
    if any(k in schema for k in ROOT_COMBINATORS):
        fail("schema must have type 'object' and not have 'oneOf'/'anyOf'/'allOf'/'enum'/'not' "
             "at the top level.")
    if schema.get("type") != "object":
        got = schema.get("type")
        shown = "null" if got is None else f'"{got}"'
        fail(f"schema must be a JSON Schema of 'type: \"object\"', got 'type: {shown}'.")
    checker = _Checker(schema, fail)
    checker.node(schema, (), 1)
    checker.limits()
