"""JSON Schema rules: check a user's schema, convert it to OpenAI's strict subset, and bring a
strict answer back to the user's shape.

Strict structured outputs (OpenAI structured-outputs guide): the root is an object; every
property is required (optional fields become unions with null); ``additionalProperties: false``
everywhere; at most 5000 properties, 10 levels of nesting and 1000 enum values; no ``allOf``,
``not``, ``if``/``then``/``else``, ``default``.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from typing import Any

import jsonschema
from jsonschema.exceptions import SchemaError

from schemas.errors import ErrorCode, LongdocError

MAX_PROPERTIES = 5000
MAX_DEPTH = 10
MAX_ENUM_VALUES = 1000
UNSUPPORTED = ("allOf", "not", "if", "then", "else", "dependentRequired", "dependentSchemas",
               "patternProperties", "unevaluatedProperties", "propertyNames", "contains")
DROPPED = ("default", "$schema", "$id", "examples", "readOnly", "writeOnly", "$comment",
           "deprecated", "minProperties", "maxProperties", "uniqueItems", "contentEncoding",
           "contentMediaType")


class InvalidSchema(LongdocError):
    """The user's schema cannot be used; the message says why."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.INVALID_SCHEMA, message)


def check_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Validates a user's schema and returns its strict form, or raises InvalidSchema.

    Every stage of a job needs the strict form; it is computed once per schema and process.
    """
    return copy.deepcopy(_checked(json.dumps(schema, sort_keys=True)))


@lru_cache(maxsize=256)
def _checked(schema_json: str) -> dict[str, Any]:
    schema = json.loads(schema_json)
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "(root)"
        raise InvalidSchema(f"not a valid JSON Schema at {where}: {exc.message}") from None
    if schema.get("type") != "object":
        raise InvalidSchema('the root of the schema must be {"type": "object", ...}')
    return to_strict(schema)


class _Converter:
    def __init__(self) -> None:
        self.properties = 0
        self.enum_values = 0

    def convert(self, node: Any, path: str, depth: int) -> Any:
        if not isinstance(node, dict):
            if isinstance(node, bool):
                raise InvalidSchema(f"{path}: boolean schemas are not supported in strict mode")
            return node
        if depth > MAX_DEPTH:
            raise InvalidSchema(f"{path}: nesting deeper than {MAX_DEPTH} levels")
        for key in UNSUPPORTED:
            if key in node:
                raise InvalidSchema(f"{path}: '{key}' is not supported by strict structured output")
        out = {k: v for k, v in node.items() if k not in DROPPED}
        if "oneOf" in out:  # strict mode knows anyOf only; the answer is checked against oneOf
            out["anyOf"] = out.pop("oneOf")
        if "enum" in out:
            self.enum_values += len(out["enum"])
            if self.enum_values > MAX_ENUM_VALUES:
                raise InvalidSchema(f"{path}: more than {MAX_ENUM_VALUES} enum values in all")
        for key in ("$defs", "definitions"):
            if key in out:
                out[key] = {
                    name: self.convert(sub, f"{path}/{key}/{name}", depth)
                    for name, sub in out[key].items()
                }
        if "anyOf" in out:
            out["anyOf"] = [
                self.convert(sub, f"{path}/anyOf/{i}", depth) for i, sub in enumerate(out["anyOf"])
            ]
        types = out.get("type")
        types = types if isinstance(types, list) else [types]
        if "object" in types or "properties" in out:
            out = self._object(out, path, depth)
        if "array" in types or "items" in out:
            if "prefixItems" in out:
                raise InvalidSchema(f"{path}: 'prefixItems' is not supported in strict mode")
            if "items" not in out:
                raise InvalidSchema(f"{path}: arrays must declare 'items' in strict mode")
            out["items"] = self.convert(out["items"], f"{path}/items", depth + 1)
        return out

    def _object(self, out: dict[str, Any], path: str, depth: int) -> dict[str, Any]:
        props = out.get("properties")
        if not props:
            raise InvalidSchema(
                f"{path}: objects must declare their 'properties' in strict mode "
                "(free-form objects are not supported)"
            )
        extra = out.get("additionalProperties", False)
        if extra not in (False, None) and extra != {}:
            raise InvalidSchema(f"{path}: 'additionalProperties' must be false in strict mode")
        self.properties += len(props)
        if self.properties > MAX_PROPERTIES:
            raise InvalidSchema(f"more than {MAX_PROPERTIES} properties in all")
        required = set(out.get("required", []))
        new_props = {}
        for name, sub in props.items():
            converted = self.convert(sub, f"{path}/properties/{name}", depth + 1)
            new_props[name] = converted if name in required else nullable(converted)
        out["properties"] = new_props
        out["required"] = list(new_props)
        out["additionalProperties"] = False
        return out


def nullable(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    types = node.get("type")
    if isinstance(types, str) and "enum" not in node and "const" not in node:
        return {**node, "type": [types, "null"]} if types != "null" else node
    if isinstance(types, list) and "enum" not in node:
        return node if "null" in types else {**node, "type": [*types, "null"]}
    if "anyOf" in node:
        if any(isinstance(b, dict) and b.get("type") == "null" for b in node["anyOf"]):
            return node
        return {**node, "anyOf": [*node["anyOf"], {"type": "null"}]}
    return {"anyOf": [node, {"type": "null"}]}


def to_strict(schema: dict[str, Any]) -> dict[str, Any]:
    strict: dict[str, Any] = _Converter().convert(copy.deepcopy(schema), "#", 1)
    return strict


def resolve_ref(node: Any, root: dict[str, Any]) -> Any:
    """Follows local ``$ref``s (``#/...``) from ``node`` to the schema they name."""
    seen = 0
    while isinstance(node, dict) and "$ref" in node and seen < 32:
        ref = node["$ref"]
        if not ref.startswith("#/"):
            return node
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part.replace("~1", "/").replace("~0", "~"), {})
        node, seen = target, seen + 1
    return node


def drop_optional_nulls(data: Any, schema: dict[str, Any], root: dict[str, Any] | None = None) -> Any:
    """Removes the nulls strict mode forced into optional fields the user's schema left out."""
    root = root or schema
    node = resolve_ref(schema, root)
    if not isinstance(node, dict):
        return data
    if isinstance(data, dict) and "properties" in node:
        required = set(node.get("required", []))
        out = {}
        for key, value in data.items():
            sub = node["properties"].get(key)
            if value is None and key not in required and sub is not None and not accepts_null(sub, root):
                continue
            out[key] = drop_optional_nulls(value, sub, root) if sub is not None else value
        return out
    if isinstance(data, list) and isinstance(node.get("items"), dict):
        return [drop_optional_nulls(item, node["items"], root) for item in data]
    for key in ("anyOf", "oneOf"):
        for branch in node.get(key, []):
            candidate = drop_optional_nulls(data, branch, root)
            if is_valid(candidate, {**resolve_ref(branch, root), "$defs": root.get("$defs", {})}):
                return candidate
    return data


def accepts_null(node: Any, root: dict[str, Any]) -> bool:
    node = resolve_ref(node, root)
    if not isinstance(node, dict):
        return bool(node)
    types = node.get("type")
    if types == "null" or (isinstance(types, list) and "null" in types):
        return True
    if None in node.get("enum", [1]):
        return True
    return any(accepts_null(b, root) for b in node.get("anyOf", []) + node.get("oneOf", []))


@lru_cache(maxsize=256)
def _validator(schema_json: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads(schema_json),
                                           format_checker=jsonschema.FormatChecker())


def validation_errors(data: Any, schema: dict[str, Any], limit: int = 5) -> list[str]:
    validator = _validator(json.dumps(schema, sort_keys=True))
    errors = []
    for err in validator.iter_errors(data):
        where = "/".join(str(p) for p in err.absolute_path) or "(root)"
        errors.append(f"{where}: {err.message}")
        if len(errors) >= limit:
            break
    return errors


def is_valid(data: Any, schema: dict[str, Any]) -> bool:
    return not validation_errors(data, schema, limit=1)
