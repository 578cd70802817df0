"""Review findings in the schema rules themselves (schemas/strict.py), reproduced in-process.

Each CPU case runs in a child process with a deadline, so a failing case costs the machine a
few seconds, not the hours the unbounded work would take. The deadlines are two orders of
magnitude above what linear work on these inputs needs (milliseconds).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

from schemas.strict import InvalidSchema, check_schema, drop_optional_nulls, validation_errors
from tests.support.stack import ROOT


def run_bounded(code: str, deadline_s: float) -> tuple[bool, float, str]:
    """Runs ``code`` in a child Python; returns (finished, seconds, output)."""
    started = time.monotonic()
    try:
        out = subprocess.run([sys.executable, "-"], input=textwrap.dedent(code), cwd=ROOT,
                             capture_output=True, text=True, timeout=deadline_s)
    except subprocess.TimeoutExpired:
        return False, time.monotonic() - started, ""
    assert out.returncode == 0, out.stderr[-2000:]
    return True, time.monotonic() - started, out.stdout


# ---------------------------------------------------------------- check_schema cost (API side)


def ref_chain(n: int) -> dict[str, Any]:
    """``#/$defs/d0`` → ``d1`` → … → ``dn`` (a string): a legal schema of 35 bytes per link."""
    defs: dict[str, Any] = {f"d{i}": {"$ref": f"#/$defs/d{i + 1}"} for i in range(n)}
    defs[f"d{n}"] = {"type": "string"}
    return {"type": "object", "required": ["a"], "properties": {"a": {"$ref": "#/$defs/d0"}},
            "$defs": defs}


def test_a_chain_of_refs_is_checked_in_linear_time() -> None:
    """FINDING: ``_check_refs`` walks the whole chain from every ``$ref`` (quadratic), before any
    size limit on definitions applies. 2,000 links (70 KB) take ~7 s of API CPU, 4,000 (140 KB)
    ~40 s; the 4 MiB body cap allows ~120,000 links (hours). It runs in the API's thread pool, so
    40 such requests also take every thread the sync routes use."""
    schema = json.dumps(ref_chain(3000))
    finished, seconds, _ = run_bounded(f"""
        import json
        from schemas.strict import check_schema
        check_schema(json.loads({schema!r}))
    """, deadline_s=4)
    assert finished, f"check_schema of a 3,000-link $ref chain ({len(schema)} bytes) ran > 4 s"


def test_a_large_schema_is_judged_in_bounded_time() -> None:
    """FINDING (high): the pre-pass allows 200,000 values, but the metaschema validation that
    follows costs ~0.4-2 ms per definition (Draft 2020-12's ``$dynamicRef``s): 20,000 small
    ``anyOf`` definitions (1.4 MB, accepted) take ~18 s of API CPU, 60,000 unreferenced ones
    (5 MB; ~11 s at the 4 MiB cap) ~15 s before their 422 for the 120,000-character limit — a
    limit the iterative pre-pass could have counted first. Expected: a verdict in about a
    second (count the strict-mode limits in the pre-pass, or a far lower node bound)."""
    defs: dict[str, Any] = {f"d{i}": {"anyOf": [{"$ref": f"#/$defs/d{i + 1}"}, {"type": "null"}]}
                            for i in range(20000)}
    defs["d20000"] = {"type": "string"}
    schema = json.dumps({"type": "object", "properties": {"a": {"$ref": "#/$defs/d0"}},
                         "$defs": defs})
    finished, seconds, _ = run_bounded(f"""
        import json
        from schemas.strict import check_schema, InvalidSchema
        try:
            check_schema(json.loads({schema!r}))
        except InvalidSchema:
            pass
    """, deadline_s=4)
    assert finished, f"judging a {len(schema)}-byte schema of 20,000 definitions ran > 4 s"


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
    """FINDING: answer validation (``drop_optional_nulls`` + jsonschema's ``oneOf``) is
    exponential in nesting: every ``oneOf`` branch is evaluated in full at every level. A
    300-byte schema with 4 branches and an 8-level answer takes ~2 minutes (measured: 11 s
    validation + 111 s ``drop_optional_nulls``); the time grows as branches^depth. This runs
    in the model worker (finalize and single-chunk extract), holding its GIL, with its lease
    renewed all along."""
    schema = one_of_tree(4)
    check_schema(schema)  # accepted at job creation
    finished, seconds, _ = run_bounded(f"""
        from schemas.strict import drop_optional_nulls, validation_errors
        schema, data = {schema!r}, {nested(8)!r}
        validation_errors(drop_optional_nulls(data, schema), schema)
    """, deadline_s=5)
    assert finished, "validating one 8-level answer against a 4-branch oneOf ran > 5 s"


def cjk_class(rng: random.Random, n: int = 240) -> str:
    """A character class of scattered CJK and astral characters (valid for Python's ``re``,
    which the metaschema's ``format: regex`` check uses, and for RE2)."""
    points = {rng.randrange(0x4E00, 0x9FFF) for _ in range(n)}
    points |= {rng.randrange(0x10000, 0x1FFFF) for _ in range(n // 3)}
    return "[" + "".join(chr(c) for c in sorted(points) if chr(c).isprintable()) + "]"


def test_compiling_the_patterns_of_one_schema_is_bounded() -> None:
    """FINDING: the pre-pass compiles every ``pattern`` with RE2 before anything else, at ~0.2 s
    and several MB each for a 300-character class repeated ``{1000}`` (RE2's program for a
    large UTF-8 class). 130 such patterns (114 KB of schema) cost 28 s of API CPU and left the
    API at 533 MB RSS (re2 keeps its last 128 programs); the 4 MiB body cap allows thousands.
    Counting pattern characters (or program size) per schema, not per pattern, bounds it."""
    rng = random.Random(1)
    schema = {"type": "object", "properties": {
        f"p{i}": {"type": "string", "pattern": cjk_class(rng) + "{1000}"} for i in range(60)}}
    finished, seconds, out = run_bounded(f"""
        import json, resource
        from schemas.strict import check_schema
        check_schema(json.loads({json.dumps(schema)!r}))
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
    """, deadline_s=4)
    size = len(json.dumps(schema, ensure_ascii=False).encode())
    assert finished, f"checking a {size}-byte schema with 60 patterns ran > 4 s"
    assert int(out.strip()) < 200, f"checking it took the process to {out.strip()} MB"


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
