"""JSON Schema rules: check a user's schema, convert it to OpenAI's strict subset, and validate
answers against the user's own schema.

A user's schema is data, never instructions: only local ``$ref``s are followed, nothing is ever
fetched, and every check is bounded. A cheap iterative pre-pass refuses oversized or deeply
nested schemas before anything recursive looks at them.

Strict structured outputs (OpenAI structured-outputs guide, "Supported schemas"): the root is an
object (not ``anyOf``); every property is required (optional fields become unions with null);
``additionalProperties: false`` everywhere; up to 5,000 properties and 10 levels of nesting; up to
120,000 characters of property names, definition names, enum and const values; up to 1,000 enum
values, and a string enum of more than 250 values within 15,000 characters. Keywords outside the
supported set are translated where the meaning is kept, or refused with the keyword and path.
Keys are generated in schema order, so the user's property order is kept.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import hashlib
import json
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote

import jsonschema
import re2
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError
from referencing import Registry

from schemas.errors import ErrorCode, LongdocError

# OpenAI's documented limits (structured-outputs guide, "Supported schemas").
MAX_PROPERTIES = 5000
MAX_DEPTH = 10
MAX_STRING_TOTAL = 120_000
MAX_ENUM_VALUES = 1000
LARGE_ENUM = 250
LARGE_ENUM_CHARS = 15_000
# Our own bounds, checked before anything recursive runs: far above any real schema.
MAX_JSON_DEPTH = 64
MAX_NODES = 30_000  # values in all; a 5,000-property schema needs about 15,000
MAX_PATTERN_CHARS = 1000
MAX_PATTERNS_CHARS = 20_000  # of all patterns together (each compiles to an RE2 program)
MAX_REF_CHAIN = 32  # $refs followed one after the other before a schema is reached
# Keyword applications one answer's validation may cost (5-8 µs each, so about 2 s at worst):
# 3x what a 5,000-row ledger needs (80,000), far below the branches^depth an adversarial anyOf nesting costs.
VALIDATION_BUDGET = 250_000

SUPPORTED_FORMATS = ("date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6",
                     "uuid")
# Kept as they are: what strict mode supports, and annotations it accepts.
SUPPORTED = {
    "type", "properties", "required", "additionalProperties", "items", "anyOf", "enum",
    "$ref", "$defs", "definitions", "pattern", "format", "multipleOf", "minimum", "maximum",
    "exclusiveMinimum", "exclusiveMaximum", "minItems", "maxItems", "description", "title",
}
# Dropped from what the model sees; still checked against the answer (annotations, or
# constraints the model is told about in the description).
DROPPED = {"default", "$schema", "$id", "$comment", "examples", "readOnly", "writeOnly",
           "deprecated", "contentEncoding", "contentMediaType"}
DESCRIBED = {"minLength", "maxLength", "uniqueItems", "minProperties", "maxProperties"}
# No translation keeps their meaning.
# Every keyword JSON Schema defines; anything else is an annotation of the user's own and is
# dropped (JSON Schema ignores unknown keywords, the API would refuse them).
KNOWN = {
    "$schema", "$id", "$ref", "$defs", "$comment", "$anchor", "$dynamicRef", "$dynamicAnchor",
    "$vocabulary", "$recursiveRef", "$recursiveAnchor", "definitions", "dependencies", "nullable",
    "type", "enum", "const", "multipleOf", "maximum", "exclusiveMaximum", "minimum",
    "exclusiveMinimum", "maxLength", "minLength", "pattern", "maxItems", "minItems", "uniqueItems",
    "maxContains", "minContains", "maxProperties", "minProperties", "required", "dependentRequired",
    "properties", "patternProperties", "additionalProperties", "propertyNames", "items",
    "prefixItems", "contains", "unevaluatedItems", "unevaluatedProperties", "allOf", "anyOf",
    "oneOf", "not", "if", "then", "else", "dependentSchemas", "format", "contentEncoding",
    "contentMediaType", "contentSchema", "title", "description", "default", "deprecated",
    "readOnly", "writeOnly", "examples",
}
REFUSED = {
    "allOf", "not", "if", "then", "else", "dependentRequired", "dependentSchemas", "dependencies",
    "patternProperties", "propertyNames", "unevaluatedItems", "unevaluatedProperties",
    "contains", "minContains", "maxContains", "prefixItems", "contentSchema", "$anchor",
    "$dynamicAnchor", "$dynamicRef", "$recursiveAnchor", "$recursiveRef", "$vocabulary",
}
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False
_RE2_OPTIONS.max_mem = 2 << 20  # a larger program is refused, not built (RE2's default: 8 MiB)


class InvalidSchema(LongdocError):
    """The user's schema cannot be used; the message says why and where."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.INVALID_SCHEMA, message)


def _pointer(parts: tuple[Any, ...]) -> str:
    return "#" + "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


class _BoundedCache:
    """A small LRU keyed by a digest of the input, so no cache grows with what users send."""

    def __init__(self, entries: int) -> None:
        self.entries = entries
        self.items: OrderedDict[str, Any] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: str, make: Callable[[], Any]) -> Any:
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        value = make()
        with self.lock:
            self.items[key] = value
            while len(self.items) > self.entries:
                self.items.popitem(last=False)
        return value


def schema_digest(schema: Any) -> str:
    # Key order is kept (it is the order the model generates keys in).
    try:
        text = json.dumps(schema, ensure_ascii=False, allow_nan=False)
    except RecursionError:
        raise InvalidSchema(f"the schema is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError:
        raise InvalidSchema("numbers in the schema must be finite") from None
    return hashlib.sha256(text.encode()).hexdigest()


_STRICT = _BoundedCache(64)
_VALIDATORS = _BoundedCache(64)


def check_schema(schema: Any) -> dict[str, Any]:
    """Validates a user's schema and returns its strict form, or raises InvalidSchema."""
    strict: dict[str, Any] = _STRICT.get(schema_digest(schema), lambda: _checked(schema))
    return copy.deepcopy(strict)


def _checked(schema: Any) -> dict[str, Any]:
    if not isinstance(schema, dict):
        raise InvalidSchema("the schema must be a JSON object")
    _prepass(schema)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "(root)"
        raise InvalidSchema(f"not a valid JSON Schema at {where}: {exc.message[:300]}") from None
    if schema.get("type") != "object":
        raise InvalidSchema('the root of the schema must be {"type": "object", ...}')
    if "anyOf" in schema or "oneOf" in schema:
        raise InvalidSchema("the root of the schema must not use anyOf or oneOf")
    _check_refs(schema)
    strict = to_strict(schema)
    _check_terminates(strict)
    return strict


# ---------------------------------------------------------------- the pre-pass


def _walk(schema: Any) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Every JSON value of the document with its path, depth first, without recursion."""
    stack: list[tuple[tuple[Any, ...], Any]] = [((), schema)]
    while stack:
        path, node = stack.pop()
        yield path, node
        if isinstance(node, dict):
            stack.extend(((*path, k), v) for k, v in reversed(list(node.items())))
        elif isinstance(node, list):
            stack.extend(((*path, i), v) for i, v in reversed(list(enumerate(node))))


def _prepass(schema: dict[str, Any]) -> None:
    """Size and shape limits checked iteratively, before anything recursive or costly runs:
    values, depth, finite numbers, local references only, nested ``$id``s, patterns (each and
    all together), and an early count of OpenAI's property and name limits."""
    nodes = properties = names = pattern_chars = 0
    for path, node in _walk(schema):
        nodes += 1
        if nodes > MAX_NODES:
            raise InvalidSchema(f"the schema has more than {MAX_NODES} values")
        if len(path) > MAX_JSON_DEPTH:
            raise InvalidSchema(f"{_pointer(path[:8])}...: the schema is nested deeper than "
                                f"{MAX_JSON_DEPTH} levels")
        if isinstance(node, float) and not math.isfinite(node):
            raise InvalidSchema(f"{_pointer(path)}: numbers must be finite")
        if not isinstance(node, dict):
            continue
        ref = node.get("$ref")
        if isinstance(ref, str) and not ref.startswith("#"):
            raise InvalidSchema(f"{_pointer(path)}: only local references ('#...') are "
                                "allowed; a schema never makes longdoc fetch anything")
        if isinstance(node.get("$id"), str) and path:
            raise InvalidSchema(f"{_pointer(path)}: '$id' is only allowed at the root (it would "
                                "change what the references below it name)")
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            pattern_chars += len(pattern)
            if pattern_chars > MAX_PATTERNS_CHARS:
                raise InvalidSchema(f"{_pointer(path)}: more than {MAX_PATTERNS_CHARS} characters "
                                    "of patterns in all")
            _compile_pattern(pattern, _pointer(path))
        for key in ("properties", "$defs", "definitions"):
            if isinstance(node.get(key), dict):
                names += sum(len(str(k)) for k in node[key])
                properties += len(node[key]) if key == "properties" else 0
        if properties > MAX_PROPERTIES:
            raise InvalidSchema(f"{_pointer(path)}: more than {MAX_PROPERTIES} properties in all")
        if names > MAX_STRING_TOTAL:
            raise InvalidSchema(f"{_pointer(path)}: more than {MAX_STRING_TOTAL} characters of "
                                "property names, definition names, enum and const values in all")


def _compile_pattern(pattern: str, where: str) -> Any:
    if len(pattern) > MAX_PATTERN_CHARS:
        raise InvalidSchema(f"{where}: a pattern may have at most {MAX_PATTERN_CHARS} characters")
    try:
        return re2.compile(pattern, _RE2_OPTIONS)
    except re2.error:
        raise InvalidSchema(f"{where}: the pattern is not supported (patterns are matched in "
                            "linear time: no lookaround or backreferences)") from None


# ---------------------------------------------------------------- references


def _target(root: dict[str, Any], ref: str) -> Any:
    """The schema a local reference names, or raises InvalidSchema. The fragment is read as the
    validator reads it: percent-decoded first, then ``~1`` and ``~0`` (RFC 6901 §6)."""
    node: Any = root
    if ref in ("#", "#/"):
        return node
    if not ref.startswith("#/"):
        raise InvalidSchema(f"$ref '{ref[:100]}': only JSON Pointers into this schema are allowed")
    for raw in ref[2:].split("/"):
        part = unquote(raw).replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise InvalidSchema(f"$ref '{ref[:100]}' names nothing in the schema")
    return node


def _check_refs(root: dict[str, Any]) -> None:
    """Every reference names a schema, no chain of references leads back to itself, and none
    is longer than ``MAX_REF_CHAIN``. Each reference is followed once (linear in the schema)."""
    settled: set[int] = set()  # references already known to end at a schema
    for path, node in _walk(root):
        if not isinstance(node, dict) or not isinstance(node.get("$ref"), str):
            continue
        chain: list[int] = []
        target: Any = node
        while isinstance(target, dict) and isinstance(target.get("$ref"), str):
            if id(target) in settled:
                break
            if id(target) in chain:
                raise InvalidSchema(f"{_pointer(path)}: the $ref chain leads back to itself")
            chain.append(id(target))
            if len(chain) > MAX_REF_CHAIN:
                raise InvalidSchema(f"{_pointer(path)}: a chain of more than {MAX_REF_CHAIN} "
                                    "$refs before a schema")
            target = _target(root, target["$ref"])
            if not isinstance(target, dict | bool):
                raise InvalidSchema(f"{_pointer(path)}: $ref '{target!s:.40}' names something "
                                    "that is not a schema")
        settled.update(chain)


def resolve_ref(node: Any, root: dict[str, Any]) -> Any:
    """Follows local ``$ref``s from ``node`` to the schema they name (schemas here are checked,
    so chains end; the bound guards the unchecked)."""
    for _ in range(64):
        if not (isinstance(node, dict) and isinstance(node.get("$ref"), str)):
            return node
        try:
            node = _target(root, node["$ref"])
        except InvalidSchema:
            return {}
    return {}


def _check_terminates(strict: dict[str, Any]) -> None:
    """A recursive schema must let an answer end: some branch of every recursion must be
    satisfiable without recursing again (an optional field, an empty array, a null branch)."""
    targets: dict[str, bool] = {}
    for _, node in _walk(strict):
        if isinstance(node, dict) and isinstance(node.get("$ref"), str):
            targets[node["$ref"]] = False

    def finite(node: Any, depth: int = 0) -> bool:
        if not isinstance(node, dict) or depth > MAX_JSON_DEPTH:
            return True
        if "$ref" in node:
            return targets.get(node["$ref"], False)
        if "anyOf" in node:
            return any(finite(branch, depth + 1) for branch in node["anyOf"])
        types = node.get("type")
        types = types if isinstance(types, list) else [types]
        if "enum" in node or any(t not in ("object", "array", None) for t in types):
            return True
        if "object" in types:
            return all(finite(sub, depth + 1) for sub in node.get("properties", {}).values())
        if "array" in types:
            return node.get("minItems", 0) == 0 or finite(node.get("items", {}), depth + 1)
        return True

    for _ in range(len(targets) + 1):
        changed = False
        for ref in targets:
            value = finite(_target(strict, ref))
            if value != targets[ref]:
                targets[ref], changed = value, True
        if not changed:
            break
    if not finite(strict):
        raise InvalidSchema("the schema's recursion never ends: every answer would be infinite "
                            "(make a recursive field optional, or allow an empty array)")


# ---------------------------------------------------------------- strict conversion


class _Converter:
    def __init__(self) -> None:
        self.properties = 0
        self.enum_values = 0
        self.string_chars = 0

    def _count_chars(self, text: str, path: str) -> None:
        self.string_chars += len(text)
        if self.string_chars > MAX_STRING_TOTAL:
            raise InvalidSchema(f"{path}: more than {MAX_STRING_TOTAL} characters of property "
                                "names, definition names, enum and const values in all")

    def convert(self, node: Any, path: str, depth: int) -> Any:
        if isinstance(node, bool):
            raise InvalidSchema(f"{path}: boolean schemas are not supported in strict mode")
        if not isinstance(node, dict):
            raise InvalidSchema(f"{path}: a schema must be an object")
        if depth > MAX_DEPTH:
            raise InvalidSchema(f"{path}: nesting deeper than {MAX_DEPTH} levels")
        for key in node:
            if key in REFUSED:
                raise InvalidSchema(f"{path}: '{key}' is not supported by strict structured "
                                    "output and has no translation")
        out: dict[str, Any] = {}
        notes: list[str] = []
        for key, value in node.items():
            if key in DROPPED or key not in KNOWN or key == "nullable":
                continue  # nullable (OpenAPI 3.0's spelling of a null union) is applied below
            if key in DESCRIBED:
                notes.append(_describe(key, value))
            elif key == "const":
                out["enum"] = [value]
            elif key == "oneOf":
                out["anyOf"] = value  # strict mode knows anyOf; the answer is checked on oneOf
            elif key == "format" and value not in SUPPORTED_FORMATS:
                notes.append(f"format: {str(value)[:50]}")
            else:
                out[key] = value
        if "$ref" in out:
            # The API refuses keywords beside $ref; annotations go, constraints cannot.
            extra = set(out) - {"$ref", "description", "title"}
            if extra:
                raise InvalidSchema(f"{path}: keywords beside $ref ({', '.join(sorted(extra))}) "
                                    "are not supported in strict mode")
            ref = {"$ref": out["$ref"]}
            return nullable(ref) if node.get("nullable") is True else ref
        self._length_pattern(node, out, notes)
        notes = [n for n in notes if n]
        if notes:
            text = "; ".join(notes)
            out["description"] = f"{out['description']} ({text})" if "description" in out else text
        if "enum" in out:
            self._enum(out["enum"], path)
        for key in ("$defs", "definitions"):
            if key in out:
                if not isinstance(out[key], dict):
                    raise InvalidSchema(f"{path}/{key}: must be an object of schemas")
                for name in out[key]:
                    self._count_chars(name, f"{path}/{key}")
                out[key] = {name: self.convert(sub, f"{path}/{key}/{name}", depth)
                            for name, sub in out[key].items()}
        if "anyOf" in out:
            out["anyOf"] = [self.convert(sub, f"{path}/anyOf/{i}", depth)
                            for i, sub in enumerate(out["anyOf"])]
        types = out.get("type")
        types = types if isinstance(types, list) else [types]
        if "object" in types or "properties" in out:
            out = self._object(out, path, depth)
        if "array" in types or "items" in out:
            if "items" not in out:
                raise InvalidSchema(f"{path}: arrays must declare 'items' in strict mode")
            out["items"] = self.convert(out["items"], f"{path}/items", depth + 1)
        return nullable(out) if node.get("nullable") is True else out

    def _length_pattern(self, node: dict[str, Any], out: dict[str, Any], notes: list[str]) -> None:
        """String lengths become a pattern the model is held to, when there is no pattern yet and
        the bounds fit RE2's repetition limit; otherwise they stay a note in the description."""
        low, high = node.get("minLength"), node.get("maxLength")
        if (low is None and high is None) or "pattern" in out:
            return
        if (low or 0) <= 1000 and (high is None or high <= 1000):
            upper = "" if high is None else str(high)
            out["pattern"] = f"^[\\s\\S]{{{low or 0},{upper}}}$"
            notes[:] = [n for n in notes if not n.startswith(("minLength", "maxLength"))]

    def _enum(self, values: Any, path: str) -> None:
        if not isinstance(values, list) or not values:
            raise InvalidSchema(f"{path}: 'enum' must list at least one value")
        self.enum_values += len(values)
        if self.enum_values > MAX_ENUM_VALUES:
            raise InvalidSchema(f"{path}: more than {MAX_ENUM_VALUES} enum values in all")
        strings = [v for v in values if isinstance(v, str)]
        chars = sum(len(v) for v in strings)
        if len(values) > LARGE_ENUM and chars > LARGE_ENUM_CHARS:
            raise InvalidSchema(f"{path}: an enum of more than {LARGE_ENUM} values may have at "
                                f"most {LARGE_ENUM_CHARS} characters in all")
        for value in values:
            self._count_chars(value if isinstance(value, str) else json.dumps(value), path)

    def _object(self, out: dict[str, Any], path: str, depth: int) -> dict[str, Any]:
        props = out.get("properties")
        if not props or not isinstance(props, dict):
            raise InvalidSchema(f"{path}: objects must declare their 'properties' in strict mode "
                                "(free-form objects are not supported)")
        extra = out.get("additionalProperties", False)
        if extra not in (False, None) and extra != {}:
            raise InvalidSchema(f"{path}: 'additionalProperties' must be false in strict mode")
        self.properties += len(props)
        if self.properties > MAX_PROPERTIES:
            raise InvalidSchema(f"{path}: more than {MAX_PROPERTIES} properties in all")
        required = out.get("required", [])
        missing = [name for name in required if name not in props]
        if missing:
            raise InvalidSchema(f"{path}: 'required' names '{str(missing[0])[:100]}', which is not "
                                "in 'properties' (no answer could ever match)")
        new_props = {}
        for name, sub in props.items():
            self._count_chars(name, path)
            converted = self.convert(sub, f"{path}/properties/{name}", depth + 1)
            new_props[name] = converted if name in required else nullable(converted)
        out["properties"] = new_props
        out["required"] = list(new_props)
        out["additionalProperties"] = False
        return out


def _describe(key: str, value: Any) -> str:
    if key == "uniqueItems":
        return "items must be unique" if value else ""
    return f"{key}: {json.dumps(value)[:50]}"


def nullable(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    types = node.get("type")
    if isinstance(types, str) and "enum" not in node:
        return {**node, "type": [types, "null"]} if types != "null" else node
    if isinstance(types, list) and "enum" not in node:
        return node if "null" in types else {**node, "type": [*types, "null"]}
    if "anyOf" in node:
        if any(isinstance(b, dict) and b.get("type") == "null" for b in node["anyOf"]):
            return node
        return {**node, "anyOf": [*node["anyOf"], {"type": "null"}]}
    return {"anyOf": [node, {"type": "null"}]}


def to_strict(schema: dict[str, Any]) -> dict[str, Any]:
    strict: dict[str, Any] = _Converter().convert(schema, "#", 1)
    if "definitions" in strict:
        # The guide documents $defs only: draft-07's "definitions" is renamed, refs with it.
        defs = strict.pop("definitions")
        clash = set(defs) & set(strict.get("$defs", {}))
        if clash:
            raise InvalidSchema(f"#: '{sorted(clash)[0][:100]}' is defined in both $defs and "
                                "definitions")
        strict["$defs"] = {**strict.get("$defs", {}), **defs}
        for _, node in _walk(strict):
            if isinstance(node, dict) and str(node.get("$ref", "")).startswith("#/definitions/"):
                node["$ref"] = "#/$defs/" + node["$ref"][len("#/definitions/"):]
    return strict


# ---------------------------------------------------------------- answers


def drop_optional_nulls(data: Any, schema: dict[str, Any], root: dict[str, Any] | None = None,
                        _seen: frozenset[int] = frozenset()) -> Any:
    """Removes the nulls strict mode forced into optional fields the user's schema left out.
    Bounded like validation: past the budget the answer is returned as it is (and its
    validation then says it is too costly)."""
    if root is None:
        token = _BUDGET.set([VALIDATION_BUDGET]) if _BUDGET.get(None) is None else None
        try:
            return _drop_optional_nulls(data, schema, schema, _seen)
        except (ValidationTooCostly, RecursionError):
            return data
        finally:
            if token is not None:
                _BUDGET.reset(token)
    return _drop_optional_nulls(data, schema, root, _seen)


def _drop_optional_nulls(data: Any, schema: dict[str, Any], root: dict[str, Any],
                         _seen: frozenset[int] = frozenset()) -> Any:
    _spend()
    node = resolve_ref(schema, root)
    if not isinstance(node, dict) or id(node) in _seen:
        return data  # a branch already tried for this same value: recursion stops here
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
    seen = _seen | {id(node)}
    for key in ("anyOf", "oneOf"):
        for branch in node.get(key, []):
            candidate = drop_optional_nulls(data, branch, root, seen)
            _spend(20)  # building the branch's validator costs more than a keyword
            if is_valid(candidate, {**resolve_ref(branch, root), "$defs": root.get("$defs", {}),
                                    "definitions": root.get("definitions", {})}):
                return candidate
    return data


def accepts_null(node: Any, root: dict[str, Any], _seen: frozenset[int] = frozenset()) -> bool:
    node = resolve_ref(node, root)
    if not isinstance(node, dict):
        return bool(node)
    if id(node) in _seen:
        return False
    types = node.get("type")
    if types == "null" or (isinstance(types, list) and "null" in types):
        return True
    if None in node.get("enum", [1]) or node.get("nullable") is True:
        return True
    seen = _seen | {id(node)}
    return any(accepts_null(b, root, seen) for b in node.get("anyOf", []) + node.get("oneOf", []))


def _re2_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if isinstance(instance, str) and not _compile_pattern(pattern, "pattern").search(instance):
        yield ValidationError("does not match the pattern")


def _re2_pattern_properties(validator: Any, patterns: dict[str, Any], instance: Any,
                            schema: Any) -> Iterator[ValidationError]:
    if not isinstance(instance, dict):
        return
    for pattern, subschema in patterns.items():
        compiled = _compile_pattern(pattern, "patternProperties")
        for key, value in instance.items():
            if compiled.search(key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _canonical(value: Any) -> str:
    # JSON Schema equality: 1 and 1.0 are equal, true and 1 are not.
    def norm(v: Any) -> Any:
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, list):
            return [norm(x) for x in v]
        if isinstance(v, dict):
            return {k: norm(x) for k, x in v.items()}
        return v

    return json.dumps(norm(value), sort_keys=True)


def _unique_items(validator: Any, unique: bool, instance: Any, schema: Any) -> Iterator[ValidationError]:
    # Linear in the number of items (jsonschema's own check is quadratic for objects).
    if unique and isinstance(instance, list):
        keys = [_canonical(item) for item in instance]
        if len(set(keys)) != len(keys):
            yield ValidationError("has non-unique items")


class ValidationTooCostly(Exception):
    """An answer whose validation would cost more than ``VALIDATION_BUDGET`` steps."""


_BUDGET: contextvars.ContextVar[list[int]] = contextvars.ContextVar("validation_budget")


@contextlib.contextmanager
def validation_budget(steps: int = VALIDATION_BUDGET) -> Iterator[None]:
    """One budget for everything checked inside (dropping forced nulls, then validating)."""
    token = _BUDGET.set([steps])
    try:
        yield
    finally:
        _BUDGET.reset(token)


def _spend(steps: int = 1) -> None:
    budget = _BUDGET.get(None)
    if budget is not None:
        budget[0] -= steps
        if budget[0] < 0:
            raise ValidationTooCostly


def _counted(keyword: Callable[..., Any]) -> Callable[..., Iterator[ValidationError]]:
    def counted(validator: Any, value: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
        _spend()
        result = keyword(validator, value, instance, schema)
        if result is not None:
            yield from result

    return counted


_KEYWORDS: dict[str, Callable[..., Any]] = {
    **Draft202012Validator.VALIDATORS, "pattern": _re2_pattern,
    "patternProperties": _re2_pattern_properties, "uniqueItems": _unique_items}
# Every keyword application is counted (anyOf/oneOf nesting is otherwise branches^depth).
_AnswerValidator = jsonschema.validators.extend(
    Draft202012Validator, {name: _counted(fn) for name, fn in _KEYWORDS.items()})
# The supported formats whose checkers are installed (the others pass, as JSON Schema allows).
_FORMATS = jsonschema.FormatChecker([f for f in SUPPORTED_FORMATS if f in jsonschema.FormatChecker.checkers])


def _validator(schema: dict[str, Any]) -> Any:
    # No registry that can retrieve: a reference outside the schema is an error, never a fetch.
    return _VALIDATORS.get(schema_digest(schema), lambda: _AnswerValidator(
        schema, registry=Registry(), format_checker=_FORMATS))


def _error_text(err: ValidationError) -> str:
    """Where the answer fails and which rule, never the value itself (it is document text)."""
    where = "/" + "/".join(str(p) for p in err.absolute_path)
    rule = err.validator
    if rule in ("required", "additionalProperties", "type", "enum", "const", "anyOf", "oneOf"):
        detail = f"fails '{rule}'"
    else:
        detail = f"fails '{rule}': {json.dumps(err.validator_value)[:80]}"
    return f"{where}: {detail}"


def validation_errors(data: Any, schema: dict[str, Any], limit: int = 5) -> list[str]:
    """Where the answer fails the schema (at most ``limit`` places); bounded in steps: an answer
    too costly to check fails as one that does not match."""
    errors = []
    token = _BUDGET.set([VALIDATION_BUDGET]) if _BUDGET.get(None) is None else None
    try:
        for err in _validator(schema).iter_errors(data):
            errors.append(_error_text(err))
            if len(errors) >= limit:
                break
    except ValidationTooCostly:
        return ["/: the answer is too costly to check against this schema "
                f"(more than {VALIDATION_BUDGET} steps)"]
    except (RecursionError, jsonschema.exceptions.SchemaError, LookupError) as exc:
        return [f"/: the answer could not be checked against this schema ({type(exc).__name__})"]
    finally:
        if token is not None:
            _BUDGET.reset(token)
    return errors


def is_valid(data: Any, schema: dict[str, Any]) -> bool:
    return not validation_errors(data, schema, limit=1)
