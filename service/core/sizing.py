"""How long a call's answer will be: what the plan cuts by, besides the prompt.

An answer is a fixed part (every field once, bounded arrays at a few items) plus, when the
schema has arrays that grow with the document (no ``maxItems``, or a large one), a part that
grows with the pages read: ``ratio`` answer tokens per page token.

A schema cannot tell 5 rows from 5,000, so before any answer the ratio is an upper bound: the
one of a page made only of items, where each item's values are the page's text and the answer
adds keys, quotes and (with citations) a source per value. For a ledger that is close; for a
contract it is 10-100x too high. So the bound only decides whether a job must *learn* before it
fans out: when it says an answer may not fit, the first call goes alone with the whole output
cap (``service.core.jobs``), and the ratio the job goes on with is the one its answers show
(``observe``): answer tokens per page token read, over every answer so far.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from schemas.strict import resolve_ref
from service.core.tokens import count_text

# Room kept free under the output cap: pages are not all equally dense. An answer planned at
# 85 % of 32,768 tokens survives a chunk ~18 % denser than the job's average.
ANSWER_MARGIN = 0.15
# An array with at most this many items is part of the fixed answer (estimated at that many).
BOUNDED_ITEMS = 20
_SAMPLE_STRING = "alpha beta gamma delta"  # 4 tokens: a typical extracted string
_SAMPLE_SOURCE = {"path": "/items/1234/amount", "document": 1, "page": 123,
                  "quote": _SAMPLE_STRING}


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


SOURCE_TOKENS = count_text(_compact(_SAMPLE_SOURCE)) + 1  # and its comma


@dataclass(frozen=True)
class AnswerSize:
    fixed: int  # tokens of the answer that do not grow with the pages
    ratio: float  # answer tokens per page token (0: the answer does not grow)

    @property
    def grows(self) -> bool:
        return self.ratio > 0

    def tokens(self, page_tokens: int) -> int:
        return self.fixed + math.ceil(self.ratio * page_tokens)


def usable_output(cap: int) -> int:
    """The answer a call is planned to hold: the output cap less the margin."""
    return max(1, math.floor(cap * (1 - ANSWER_MARGIN)))


def lower_bound_calls(page_tokens: int, input_budget: int, answer_tokens: int, usable: int) -> int:
    """No plan can do with fewer calls: each carries at most a budget of pages and an answer of
    at most the usable output."""
    return max(math.ceil(page_tokens / max(1, input_budget)), math.ceil(answer_tokens / max(1, usable)), 1)


# References can make a small schema stand for a huge instance (a definition of ten properties
# that each refer to the next, ten deep): sampling stops after this many values, an estimate
# being all that is needed of it.
MAX_SAMPLE_VALUES = 5000


class _Sampler:
    """Builds a typical instance of a schema: every property once, arrays empty or sampled."""

    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.growing: list[Any] = []  # item schemas of the arrays that grow
        self.values = 0

    def sample(self, node: Any, depth: int = 0, in_item: bool = False) -> Any:
        self.values += 1
        node = resolve_ref(node, self.root)
        if not isinstance(node, dict) or depth > 12 or self.values > MAX_SAMPLE_VALUES:
            return None
        if "enum" in node:
            return node["enum"][0] if node["enum"] else None
        if "anyOf" in node:
            branches = [b for b in node["anyOf"]
                        if resolve_ref(b, self.root).get("type") not in ("null", ["null"])]
            return self.sample(branches[0], depth + 1, in_item) if branches else None
        kind = node.get("type", "string")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind == "object":
            return {k: self.sample(v, depth + 1, in_item)
                    for k, v in (node.get("properties") or {}).items()}
        if kind == "array":
            limit = node.get("maxItems")
            if limit is not None and limit <= BOUNDED_ITEMS:
                count = min(limit, max(node.get("minItems", 0), 3))
                return [self.sample(node.get("items", {}), depth + 1, True) for _ in range(count)]
            if not in_item:
                self.growing.append(node.get("items", {}))
                return []
            return [self.sample(node.get("items", {}), depth + 1, True)]  # one nested item
        if kind == "string":
            fmt = node.get("format")
            return {"date": "2024-01-31", "date-time": "2024-01-31T12:00:00Z",
                    "email": "name@example.com"}.get(fmt or "", _SAMPLE_STRING)
        if kind == "integer":
            return 1234
        if kind == "number":
            return 1234.56
        if kind == "boolean":
            return True
        return None


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]


def answer_size(data_schema: dict[str, Any], cited: bool) -> AnswerSize:
    """The fixed part and the upper-bound ratio of answers to ``data_schema`` (the user's
    schema in strict form), sources included when ``cited``."""
    sampler = _Sampler(data_schema)
    skeleton = sampler.sample(data_schema)
    fixed = count_text(_compact(skeleton))
    if cited:
        fixed += 12 + SOURCE_TOKENS * sum(1 for leaf in _leaves(skeleton) if leaf is not None)
    ratio = 0.0
    for items in sampler.growing:
        item = _Sampler(data_schema).sample(items, 1, True)
        leaves = [leaf for leaf in _leaves(item) if leaf is not None]
        answer = count_text(_compact(item)) + 1
        if cited:
            answer += SOURCE_TOKENS * len(leaves)
        # The item as printed: its values, space-separated, one line.
        printed = count_text(" ".join(str(leaf) for leaf in leaves)) + 1
        ratio = max(ratio, answer / max(1, printed))
    return AnswerSize(fixed, ratio)


def citation_factor(data_schema: dict[str, Any]) -> float:
    """How much longer sources make an answer that grows (1.0 without growing arrays)."""
    plain, cited = answer_size(data_schema, False), answer_size(data_schema, True)
    return cited.ratio / plain.ratio if plain.ratio else 1.0


def observed_ratio(observed_answer: int, observed_pages: int, fixed: int, answers: int) -> float:
    """Answer tokens per page token over the answers so far (their fixed parts taken out)."""
    return max(0.0, observed_answer - fixed * answers) / max(1, observed_pages)
