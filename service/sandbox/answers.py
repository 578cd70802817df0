"""Deterministic answers valid against a strict JSON schema: the oracle's entries where the pages
hold their match, the rest filled from the document text; and the citations of those entries
when the request asks for them."""

from __future__ import annotations

import copy
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from service.sandbox.oracle import Hit, OracleEntry, Page, find_hits, join_pointer

_NUMBER = re.compile(r"-?\d+(?:[.,]\d+)?")
_DATE = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")
_HEADER = re.compile(r"^Document \d+, page \d+(?:, part \d+)?(?:, image \d+)?$")


class AnswerBuilder:
    def __init__(self, text: str, root: dict[str, Any]) -> None:
        self.lines = [ln.strip() for ln in text.splitlines()
                      if ln.strip() and not _HEADER.match(ln.strip())]
        self.headers = [ln.strip() for ln in text.splitlines() if _HEADER.match(ln.strip())]
        self.text = text
        self.root = root

    def resolve(self, node: Any) -> Any:
        depth = 0
        while isinstance(node, dict) and "$ref" in node and depth < 32:
            target: Any = self.root
            ref = str(node["$ref"])
            for part in ref[2:].split("/") if ref.startswith("#/") else []:
                target = target.get(part.replace("~1", "/").replace("~0", "~"), {}) \
                    if isinstance(target, dict) else {}
            node, depth = target, depth + 1
        return node

    def value(self, node: Any, name: str, depth: int = 0) -> Any:
        node = self.resolve(node)
        if not isinstance(node, dict) or depth > 64:
            return None  # (a schema no finite answer satisfies, such as a required self-reference)
        if "const" in node:
            return node["const"]
        if "enum" in node:
            return self._enum(node["enum"], name)
        if "anyOf" in node:
            branches = [b for b in node["anyOf"] if self.resolve(b).get("type") != "null"]
            if depth >= 8 and len(branches) < len(node["anyOf"]):
                return None  # a recursive schema ends where null is allowed
            return self.value(branches[0], name, depth) if branches else None
        kind = node.get("type", "string")
        if isinstance(kind, list):
            non_null = [k for k in kind if k != "null"]
            kind = non_null[0] if non_null else "null"
        if kind == "object":
            return {key: self.value(sub, key, depth + 1)
                    for key, sub in node.get("properties", {}).items()}
        if kind == "array":
            return self._array(node, name, depth)
        if kind == "string":
            return self._string(node, name)
        if kind in ("integer", "number"):
            return self._number(node, name, kind == "integer")
        if kind == "boolean":
            return self._line_for(name) is not None
        return None

    def _enum(self, options: list[Any], name: str) -> Any:
        lowered = self.text.lower()
        for option in options:
            if isinstance(option, str) and option and option.lower() in lowered:
                return option
        return options[0] if options else None

    def _line_for(self, name: str) -> str | None:
        words = name.replace("_", " ").replace("-", " ").lower().strip()
        if not words:
            return None
        for line in self.lines:
            if words in line.lower():
                return line
        return None

    def _labelled(self, name: str) -> str | None:
        line = self._line_for(name)
        if line is None:
            return None
        label = name.replace("_", " ").replace("-", " ").lower()
        after = line.lower().split(label, 1)[1]
        value = line[len(line) - len(after):].lstrip(" :#=-\t")
        return value or None

    def _string(self, node: dict[str, Any], name: str) -> str:
        fmt = node.get("format")
        if fmt == "date":
            match = _DATE.search(self.text)
            value = match.group(0) if match else "2000-01-01"
        elif fmt == "date-time":
            match = _DATE.search(self.text)
            value = (match.group(0) if match else "2000-01-01") + "T00:00:00Z"
        elif fmt == "email":
            match = _EMAIL.search(self.text)
            value = match.group(0) if match else "unknown@example.com"
        else:
            value = self._labelled(name) or (self.lines[0] if self.lines else "")
        max_len = node.get("maxLength")
        if max_len is not None:
            value = value[:max_len]
        min_len = node.get("minLength", 0)
        if len(value) < min_len:
            value = value.ljust(min_len, "-")
        return value

    def _number(self, node: dict[str, Any], name: str, integer: bool) -> int | float:
        source = self._labelled(name) or ""
        match = _NUMBER.search(source)
        number: float = float(match.group(0).replace(",", ".")) if match else 0.0
        if "minimum" in node:
            number = max(number, node["minimum"])
        if "exclusiveMinimum" in node and number <= node["exclusiveMinimum"]:
            number = node["exclusiveMinimum"] + 1
        if "maximum" in node:
            number = min(number, node["maximum"])
        if "exclusiveMaximum" in node and number >= node["exclusiveMaximum"]:
            number = node["exclusiveMaximum"] - 1
        return int(number) if integer else number

    def _array(self, node: dict[str, Any], name: str, depth: int) -> list[Any]:
        items = self.resolve(node.get("items", {}))
        low = node.get("minItems", 0)
        high = node.get("maxItems", 5)
        # One item per page of this part (up to five): distinct parts give distinct items.
        count = max(low, min(high, max(1, min(5, len(self.headers)))))
        if depth >= 8:
            count = low
        out = []
        for i in range(count):
            line = self.lines[i % len(self.lines)] if self.lines else ""
            if items.get("type") in ("string", ["string", "null"]) and not items.get("enum"):
                header = self.headers[i] if i < len(self.headers) else ""
                out.append(f"{header}: {line}"[: items.get("maxLength", 200)] if header else line)
            else:
                sub = AnswerBuilder("\n".join(self.lines[i:] + self.lines[:i]), self.root)
                sub.headers = self.headers[i:i + 1]
                out.append(sub.value(items, name, depth + 1))
        return out


@dataclass(frozen=True)
class CitationShape:
    """``{"data": <the user's schema>, "sources": [{path, document, page, quote}]}``."""

    data: dict[str, Any]
    source: dict[str, Any]


def citation_shape(schema: dict[str, Any], builder: AnswerBuilder) -> CitationShape | None:
    props = schema.get("properties")
    if not isinstance(props, dict) or set(props) != {"data", "sources"}:
        return None
    sources = builder.resolve(props["sources"])
    item = builder.resolve(sources.get("items")) if isinstance(sources, dict) else None
    item_props = item.get("properties") if isinstance(item, dict) else None
    if not isinstance(item, dict) or not isinstance(item_props, dict) \
            or not {"path", "document", "page", "quote"} <= set(item_props):
        return None
    return CitationShape(props["data"], item)


@dataclass
class Composed:
    answer: Any
    hits: int = 0
    citations: int = 0
    fabricated: list[dict[str, Any]] = field(default_factory=list)


def _draw(*parts: object) -> float:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _get(doc: Any, tokens: tuple[str, ...]) -> Any:
    for token in tokens:
        if isinstance(doc, dict):
            doc = doc.get(token)
        elif isinstance(doc, list) and token.isdigit() and int(token) < len(doc):
            doc = doc[int(token)]
        else:
            return None
    return doc


def _set(doc: Any, tokens: tuple[str, ...], value: Any) -> tuple[str | int, ...] | None:
    """Puts ``value`` at ``tokens`` (``-`` appends); returns the pointer it landed at."""
    if not tokens:
        return None
    container = _get(doc, tokens[:-1])
    last = tokens[-1]
    if isinstance(container, list):
        index = len(container) if last == "-" else int(last) if last.isdigit() else -1
        if index == len(container):
            container.append(value)
        elif 0 <= index < len(container):
            container[index] = value
        else:
            return None
        return (*tokens[:-1], index)
    if isinstance(container, dict):
        container[last] = value
        return tokens
    return None


def _leaves(value: Any) -> list[tuple[str | int, ...]]:
    if isinstance(value, dict) and value:
        return [(k, *rest) for k, v in value.items() for rest in _leaves(v)]
    if isinstance(value, list) and value:
        return [(i, *rest) for i, v in enumerate(value) for rest in _leaves(v)]
    return [()]


@dataclass(frozen=True)
class Placed:
    hit: Hit
    at: tuple[str | int, ...]  # where the entry's value landed ("-" resolved to an index)


class Composer:
    def __init__(self, schema: dict[str, Any], text: str, pages: list[Page],
                 entries: list[OracleEntry], seed: int, fabricate_rate: float) -> None:
        self.builder = AnswerBuilder(text, schema)
        self.schema, self.pages, self.entries = schema, pages, entries
        self.seed, self.fabricate_rate = seed, fabricate_rate
        self.shape_data: Any = schema  # the schema of the answer's data part

    def compose(self) -> Composed:
        shape = citation_shape(self.schema, self.builder)
        data_node = self.shape_data = shape.data if shape else self.schema
        data = self.builder.value(data_node, "")
        hits = find_hits(self.entries, self.pages)
        owned = {e.tokens[:-1] for e in self.entries if e.appends}
        for pointer in owned:
            target = _get(data, pointer)
            if isinstance(target, list):
                target.clear()
        placed: list[Placed] = []
        for hit in hits:
            at = _set(data, hit.entry.tokens, copy.deepcopy(hit.entry.value))
            if at is not None:
                placed.append(Placed(hit, at))
        self._fill_minimum(data, data_node, owned)
        data = self.conform(data, data_node)
        result = Composed(data, hits=len(placed))
        if shape is not None:
            sources = [self.conform(source, shape.source)
                       for source in self._sources(placed, result)]
            result.answer = self.conform({"data": data, "sources": sources}, self.schema)
        return result

    def _fill_minimum(self, data: Any, node: Any, owned: set[tuple[str, ...]]) -> None:
        for pointer in owned:
            target, schema = _get(data, pointer), self.schema_at(node, pointer)
            low = schema.get("minItems", 0) if isinstance(schema, dict) else 0
            if isinstance(target, list) and len(target) < low:
                items = schema.get("items", {})
                target.extend(self.builder.value(items, pointer[-1] if pointer else "", 1)
                              for _ in range(low - len(target)))

    def schema_at(self, node: Any, tokens: tuple[str, ...]) -> Any:
        for token in tokens:
            node = self._branch(self.builder.resolve(node), None)
            if not isinstance(node, dict):
                return None
            if token.isdigit() or token == "-":
                node = node.get("items")
            else:
                node = (node.get("properties") or {}).get(token)
        return self.builder.resolve(node)

    def _branch(self, node: Any, value: Any) -> Any:
        """The ``anyOf`` branch ``value`` belongs to (the first non-null one otherwise)."""
        if not isinstance(node, dict) or "anyOf" not in node:
            return node
        branches = [b for b in map(self.builder.resolve, node["anyOf"]) if isinstance(b, dict)]
        for branch in branches:
            props = branch.get("properties")
            if isinstance(value, dict) and isinstance(props, dict) and set(value) <= set(props):
                return branch
            if isinstance(value, list) and ("items" in branch or branch.get("type") == "array"):
                return branch
        return next((b for b in branches if b.get("type") != "null"), node)

    def conform(self, value: Any, node: Any, fill: bool = True) -> Any:
        """``value`` with its keys in schema order (OpenAI generates keys in the schema's
        order) and, with ``fill``, the properties it lacks filled as any other value."""
        node = self._branch(self.builder.resolve(node), value)
        if not isinstance(node, dict):
            return value
        props = node.get("properties")
        if isinstance(value, dict) and isinstance(props, dict):
            out = {key: self.conform(value[key], sub, fill) if key in value
                   else self.builder.value(sub, key, 1) for key, sub in props.items()
                   if fill or key in value}
            out.update({k: v for k, v in value.items() if k not in props})
            return out
        if isinstance(value, list) and "items" in node:
            return [self.conform(item, node["items"], fill) for item in value]
        return value

    def _sources(self, placed: list[Placed], result: Composed) -> list[dict[str, Any]]:
        sources = []
        for hit, at in ((p.hit, p.at) for p in placed):
            # Leaves in the schema's order, as the answer writes them.
            node = self.schema_at(self.shape_data, hit.entry.tokens)
            for leaf in _leaves(self.conform(hit.entry.value, node, fill=False)):
                key = join_pointer((*hit.entry.tokens, *leaf))
                source = {"path": join_pointer((*at, *leaf)), "document": hit.page.document,
                          "page": hit.page.page, "quote": hit.entry.match}
                if self.fabricate_rate and \
                        _draw(self.seed, "fabricate", hit.entry.match, key) < self.fabricate_rate:
                    source = self._fabricate(source, hit, key)
                    result.fabricated.append({
                        **source, "match": hit.entry.match, "entry_path": key,
                        "true_document": hit.page.document, "true_page": hit.page.page})
                sources.append(source)
        result.citations = len(sources)
        return sources

    def _fabricate(self, source: dict[str, Any], hit: Hit, key: str) -> dict[str, Any]:
        """Another page and a quote that is on no page, chosen by the seed and the entry."""
        true = (hit.page.document, hit.page.page)
        others = sorted({(p.document, p.page) for p in self.pages} - {true})
        pick = _draw(self.seed, "page", hit.entry.match, key)
        document, page = others[int(pick * len(others))] if others else (true[0], true[1] + 1)
        invented = hashlib.sha256(f"{self.seed}:quote:{hit.entry.match}:{key}".encode()).hexdigest()
        return {**source, "document": document, "page": page,
                "quote": f"sandbox invented this quote {invented[:12]}"}


def build_answer(schema: dict[str, Any], text: str) -> Any:
    return AnswerBuilder(text, schema).value(schema, "")
