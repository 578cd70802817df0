import pytest

from schemas.strict import InvalidSchema, check_schema, drop_optional_nulls, is_valid


def test_optional_fields_become_required_and_nullable() -> None:
    strict = check_schema({"type": "object", "required": ["a"], "properties": {
        "a": {"type": "string"}, "b": {"type": "integer"},
        "c": {"type": "object", "properties": {"d": {"type": "string", "format": "date"}}}}})
    assert strict["required"] == ["a", "b", "c"] and strict["additionalProperties"] is False
    assert strict["properties"]["b"]["type"] == ["integer", "null"]
    assert strict["properties"]["c"]["additionalProperties"] is False
    assert strict["properties"]["c"]["properties"]["d"]["type"] == ["string", "null"]


@pytest.mark.parametrize("schema, words", [
    ({"type": "object", "properties": {"x": {"not": {"type": "string"}}}}, "'not'"),
    ({"type": "object", "properties": {"x": {"type": "string", "if": {}}}}, "'if'"),
    ({"type": "object", "properties": {"x": {"type": "array"}}}, "items"),
    ({"type": "object", "properties": {"x": {
        "type": "object", "additionalProperties": True, "properties": {"y": {"type": "string"}}}}},
     "additionalProperties"),
    ({"type": "object", "properties": {"x": {"type": "string", "enum": list(range(1001))}}}, "enum"),
])
def test_unsupported_constructs_are_refused_with_the_reason(schema, words) -> None:
    with pytest.raises(InvalidSchema) as err:
        check_schema(schema)
    assert words in str(err.value)


def test_nesting_deeper_than_ten_levels_is_refused() -> None:
    node = {"type": "string"}
    for _ in range(11):
        node = {"type": "object", "properties": {"n": node}}
    with pytest.raises(InvalidSchema, match="nesting"):
        check_schema(node)


def test_nulls_forced_into_optional_fields_are_dropped_before_validation() -> None:
    schema = {"type": "object", "required": ["a"], "properties": {
        "a": {"type": "string"}, "b": {"type": "integer"},
        "items": {"type": "array", "items": {"$ref": "#/$defs/item"}}},
        "$defs": {"item": {"type": "object", "properties": {"n": {"type": "string"}}}}}
    answer = {"a": "x", "b": None, "items": [{"n": None}, {"n": "y"}]}
    assert not is_valid(answer, schema)
    cleaned = drop_optional_nulls(answer, schema)
    assert cleaned == {"a": "x", "items": [{}, {"n": "y"}]}
    assert is_valid(cleaned, schema)
