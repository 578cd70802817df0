"""Review findings in the schema rules themselves (schemas/strict.py), reproduced in-process.

Each CPU case runs in a child process with a deadline, so a failing case costs the machine a
few seconds, not the hours the unbounded work would take. The deadlines are two orders of
magnitude above what linear work on these inputs needs (milliseconds).
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from schemas.strict import (
    VALIDATION_BUDGET,
    InvalidSchema,
    check_schema,
    drop_optional_nulls,
    validation_budget,
    validation_errors,
)

# ---------------------------------------------------------------- check_schema cost (API side)


def ref_chain(n: int) -> dict[str, Any]:
    """``#/$defs/d0`` → ``d1`` → … → ``dn`` (a string): a legal schema of 35 bytes per link."""
    defs: dict[str, Any] = {f"d{i}": {"$ref": f"#/$defs/d{i + 1}"} for i in range(n)}
    defs[f"d{n}"] = {"type": "string"}
    return {"type": "object", "required": ["a"], "properties": {"a": {"$ref": "#/$defs/d0"}},
            "$defs": defs}


def test_a_chain_of_refs_is_refused_past_its_cap() -> None:
    """Was: ``_check_refs`` walked the whole chain from every ``$ref`` (quadratic): 4,000 links
    (140 KB) cost ~40 s of API CPU. Now each reference is followed once and a chain of more
    than 32 is refused; a chain within the cap is accepted."""
    with pytest.raises(InvalidSchema, match="chain of more than 32"):
        check_schema(ref_chain(3000))
    check_schema(ref_chain(20))


def test_a_large_schema_is_refused_by_the_cheap_pre_pass() -> None:
    """Was: 20,000 small ``anyOf`` definitions (1.4 MB) passed the pre-pass and cost ~18 s of
    metaschema validation. Now the pre-pass counts values (at most 30,000) before anything
    costly runs."""
    defs: dict[str, Any] = {f"d{i}": {"anyOf": [{"$ref": f"#/$defs/d{i + 1}"}, {"type": "null"}]}
                            for i in range(20000)}
    defs["d20000"] = {"type": "string"}
    with pytest.raises(InvalidSchema, match="more than 30000 values"):
        check_schema({"type": "object", "properties": {"a": {"$ref": "#/$defs/d0"}}, "$defs": defs})


def one_of_tree(branches: int) -> dict[str, Any]:
    node = {"type": "object", "required": ["c"], "properties": {
        "c": {"oneOf": [{"$ref": "#/$defs/N"}] * branches + [{"type": "null"}]}}}
    return {"type": "object", "required": ["root"], "properties": {"root": {"$ref": "#/$defs/N"}},
            "$defs": {"N": node}}


def nested(depth: int) -> dict[str, Any]:
    data: dict[str, Any] = {"c": None}
    for _ in range(depth):
        data = {"c": data}
    return {"root": data}


def test_validating_an_answer_is_bounded_whatever_the_oneof_nesting() -> None:
    """Was: answer validation (``drop_optional_nulls`` + jsonschema's ``oneOf``) was exponential
    in nesting: 4 branches and an 8-level answer took ~2 minutes. Now both run under one step
    budget, and an answer past it is reported as too costly to check (the job fails
    ``model_output_invalid``) instead of holding a worker."""
    schema = one_of_tree(4)
    check_schema(schema)  # accepted at job creation
    with validation_budget():
        data = drop_optional_nulls(nested(8), schema)
        errors = validation_errors(data, schema)
    assert errors == ["/: the answer is too costly to check against this schema (more than "
                      f"{VALIDATION_BUDGET} steps)"]


def cjk_class(rng: random.Random, n: int = 240) -> str:
    """A character class of scattered CJK and astral characters (valid for Python's ``re``,
    which the metaschema's ``format: regex`` check uses, and for RE2)."""
    points = {rng.randrange(0x4E00, 0x9FFF) for _ in range(n)}
    points |= {rng.randrange(0x10000, 0x1FFFF) for _ in range(n // 3)}
    return "[" + "".join(chr(c) for c in sorted(points) if chr(c).isprintable()) + "]"


def test_the_patterns_of_one_schema_are_bounded_together() -> None:
    """Was: each pattern was compiled by RE2 whatever its program's size: 130 large-class
    patterns cost 28 s and 533 MB. Now a program above 2 MiB is refused, and so are more than
    20,000 characters of patterns in one schema."""
    rng = random.Random(1)
    big = {"type": "object", "properties": {
        f"p{i}": {"type": "string", "pattern": cjk_class(rng) + "{1000}"} for i in range(60)}}
    with pytest.raises(InvalidSchema, match="pattern is not supported"):
        check_schema(big)
    many = {"type": "object", "properties": {
        f"p{i}": {"type": "string", "pattern": "^[a-z]{1,5}" + "x" * 980 + "$"} for i in range(25)}}
    with pytest.raises(InvalidSchema, match="characters of patterns in all"):
        check_schema(many)


# ---------------------------------------------------- refs the check and the validator read differently


ACCEPTED_THEN_CRASH = {
    # JSON Pointer in a URI fragment is percent-decoded by jsonschema (RFC 6901 §6), not by
    # schemas.strict._target: the check finds "x%25y", the validator looks for "x%y".
    "percent-encoded": ({"type": "object", "required": ["a"],
                         "properties": {"a": {"$ref": "#/$defs/x%25y"}},
                         "$defs": {"x%25y": {"type": "string"}}}, {"a": "text"}),
    # A nested $id changes the base URI for the refs inside it; _target always reads from the
    # root, the validator from the resource the $id starts.
    "nested $id": ({"type": "object", "required": ["a"], "properties": {"a": {"$ref": "#/$defs/w"}},
                    "$defs": {"w": {"$id": "urn:other", "type": "object", "required": ["b"],
                                    "properties": {"b": {"$ref": "#/$defs/s"}}},
                              "s": {"type": "string"}}}, {"a": {"b": "text"}}),
    # A $ref into an enum array names a string, not a schema.
    # A chain of 500 refs (17 KB, checked in 0.3 s): jsonschema follows it recursively.
    "500-link ref chain": (ref_chain(500), {"a": "text"}),
    "ref into enum": ({"type": "object", "required": ["a", "b"],
                       "properties": {"a": {"enum": ["x"]}, "b": {"$ref": "#/properties/a/enum/0"}}},
                      {"a": "x", "b": "x"}),
}


@pytest.mark.parametrize("case", list(ACCEPTED_THEN_CRASH))
def test_a_schema_accepted_at_creation_can_validate_its_answers(case: str) -> None:
    """FINDING: these schemas pass ``check_schema`` (the job is accepted, 202) but validating
    any answer raises (``_WrappedReferencingError``, ``AttributeError``, ``RecursionError``).
    In a stack the worker task raises after the model answered, so the call is recorded
    ``unknown`` instead of its usage, the chunk is retried ``LONGDOC_TASK_MAX_ATTEMPTS`` times
    (each a billed call) and the job fails ``internal_error`` (test_hostile_stack.py shows it)."""
    schema, answer = ACCEPTED_THEN_CRASH[case]
    try:
        check_schema(schema)
    except InvalidSchema:
        return  # refused at creation: fine
    try:
        validation_errors(drop_optional_nulls(answer, schema), schema)
    except Exception as exc:  # noqa: BLE001 - the finding is that anything escapes
        pytest.fail(f"accepted by check_schema, then validation raised {type(exc).__name__}")
