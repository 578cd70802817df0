"""Schema-aware, deterministic merge of the answers of a job's chunks (in page order).

Arrays are concatenated with exact duplicates removed, objects merged field by field, scalars
take the first non-null value; differing non-null scalars are reported as conflicts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from schemas.strict import resolve_ref


@dataclass
class Conflict:
    path: str
    values: list[Any]
    chosen: Any

    def as_json(self) -> dict[str, Any]:
        return {"type": "conflict", "path": self.path or "/", "values": self.values,
                "chosen": self.chosen}


@dataclass
class MergeOutcome:
    data: Any
    conflicts: list[Conflict] = field(default_factory=list)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def merge_values(values: list[Any], schema: dict[str, Any], root: dict[str, Any] | None = None,
                 path: str = "", conflicts: list[Conflict] | None = None) -> Any:
    root = root if root is not None else schema
    conflicts = conflicts if conflicts is not None else []
    node = resolve_ref(schema, root)
    node = node if isinstance(node, dict) else {}
    present = [v for v in values if v is not None]
    if not present:
        return None
    if all(isinstance(v, dict) for v in present):
        props = node.get("properties", {})
        keys: list[str] = list(props)
        for v in present:
            keys.extend(k for k in v if k not in keys)
        return {key: merge_values([v.get(key) for v in present], props.get(key, {}), root,
                                  f"{path}/{key}", conflicts) for key in keys}
    if all(isinstance(v, list) for v in present):
        seen: set[str] = set()
        merged = []
        for item in (item for v in present for item in v):
            key = _canonical(item)
            if key not in seen:
                seen.add(key)
                merged.append(item)
        return merged
    first = present[0]
    distinct: list[Any] = []
    for v in present:
        if _canonical(v) not in {_canonical(d) for d in distinct}:
            distinct.append(v)
    if len(distinct) > 1:
        conflicts.append(Conflict(path, distinct, first))
    return first


def merge_answers(answers: list[Any], schema: dict[str, Any]) -> MergeOutcome:
    if len(answers) == 1:
        return MergeOutcome(answers[0])
    conflicts: list[Conflict] = []
    data = merge_values(answers, schema, schema, "", conflicts)
    return MergeOutcome(data, conflicts)


def apply_choices(data: Any, choices: dict[str, Any]) -> Any:
    """Sets the values a resolver chose, by JSON-pointer-like path ("/a/b")."""
    for path, value in choices.items():
        parts = [p for p in path.split("/") if p]
        if not parts:
            continue
        target = data
        for part in parts[:-1]:
            target = target.get(part) if isinstance(target, dict) else None
            if target is None:
                break
        if isinstance(target, dict):
            target[parts[-1]] = value
    return data
