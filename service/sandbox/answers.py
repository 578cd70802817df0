"""Deterministic answers valid against a strict JSON schema, filled from the document text."""

from __future__ import annotations

import re
from typing import Any

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
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target.get(part, {})
            node, depth = target, depth + 1
        return node

    def value(self, node: Any, name: str, depth: int = 0) -> Any:
        node = self.resolve(node)
        if not isinstance(node, dict):
            return None
        if "const" in node:
            return node["const"]
        if "enum" in node:
            return self._enum(node["enum"], name)
        if "anyOf" in node:
            branches = [b for b in node["anyOf"] if self.resolve(b).get("type") != "null"]
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


def build_answer(schema: dict[str, Any], text: str) -> Any:
    return AnswerBuilder(text, schema).value(schema, "")
