from typing import Any

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
    node: dict[str, Any] = {"type": "string"}
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


def _obj(**props: object) -> dict:
    return {"type": "object", "properties": props}


# Every keyword of OpenAI's "Supported schemas" page, and the ones it names as unsupported:
# kept, translated (meaning kept), or refused with the keyword and where it is.
@pytest.mark.parametrize("keyword, node", [
    ("pattern", {"type": "string", "pattern": "^[A-Z]{3}$"}),
    ("format", {"type": "string", "format": "date-time"}),
    ("multipleOf", {"type": "number", "multipleOf": 0.5}),
    ("minimum", {"type": "integer", "minimum": 1}),
    ("maximum", {"type": "integer", "maximum": 9}),
    ("exclusiveMinimum", {"type": "number", "exclusiveMinimum": 0}),
    ("exclusiveMaximum", {"type": "number", "exclusiveMaximum": 1}),
    ("minItems", {"type": "array", "items": {"type": "string"}, "minItems": 1}),
    ("maxItems", {"type": "array", "items": {"type": "string"}, "maxItems": 3}),
    ("description", {"type": "string", "description": "the total"}),
    ("enum", {"type": "string", "enum": ["a", "b"]}),
])
def test_supported_keywords_reach_the_model_as_they_are(keyword: str, node: dict) -> None:
    strict = check_schema({**_obj(x=node), "required": ["x"]})
    assert strict["properties"]["x"][keyword] == node[keyword]


@pytest.mark.parametrize("node, expected", [
    ({"type": "string", "nullable": True}, {"type": ["string", "null"]}),
    ({"const": "fixed"}, {"enum": ["fixed"]}),
    ({"oneOf": [{"type": "string"}, {"type": "integer"}]},
     {"anyOf": [{"type": "string"}, {"type": "integer"}]}),
    ({"type": "string", "maxLength": 5}, {"type": "string", "pattern": "^[\\s\\S]{0,5}$"}),
    ({"type": "string", "minLength": 2, "maxLength": 4},
     {"type": "string", "pattern": "^[\\s\\S]{2,4}$"}),
    ({"type": "string", "format": "uri"}, {"type": "string", "description": "format: uri"}),
    ({"type": "string", "default": "x", "examples": ["y"], "$comment": "c", "x-vendor": 1},
     {"type": "string"}),
    ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True},
     {"type": "array", "items": {"type": "integer"}, "description": "items must be unique"}),
    ({"$ref": "#/$defs/d", "description": "annotation beside a ref"}, {"$ref": "#/$defs/d"}),
])
def test_keywords_outside_the_subset_are_translated_keeping_their_meaning(node, expected) -> None:
    strict = check_schema({**_obj(x=node), "required": ["x"], "$defs": {"d": {"type": "string"}}})
    assert strict["properties"]["x"] == expected


def test_definitions_become_defs_with_their_references() -> None:
    strict = check_schema({**_obj(x={"$ref": "#/definitions/d"}), "required": ["x"],
                           "definitions": {"d": {"type": "integer"}}})
    assert strict["properties"]["x"] == {"$ref": "#/$defs/d"}
    assert strict["$defs"] == {"d": {"type": "integer"}} and "definitions" not in strict


@pytest.mark.parametrize("keyword, node", [
    ("allOf", {"allOf": [{"type": "string"}]}),
    ("not", {"not": {"type": "string"}}),
    ("if", {"type": "string", "if": {"minLength": 1}, "then": {}}),
    ("dependentRequired", {"type": "object", "properties": {"a": {"type": "string"}},
                           "dependentRequired": {"a": []}}),
    ("dependentSchemas", {"type": "object", "properties": {"a": {"type": "string"}},
                          "dependentSchemas": {"a": {}}}),
    ("dependencies", {"type": "object", "properties": {"a": {"type": "string"}},
                      "dependencies": {"a": []}}),
    ("patternProperties", {"type": "object", "properties": {"a": {"type": "string"}},
                           "patternProperties": {"^x": {}}}),
    ("propertyNames", {"type": "object", "properties": {"a": {"type": "string"}},
                       "propertyNames": {"maxLength": 3}}),
    ("unevaluatedItems", {"type": "array", "items": {"type": "string"}, "unevaluatedItems": False}),
    ("unevaluatedProperties", {"type": "object", "properties": {"a": {"type": "string"}},
                               "unevaluatedProperties": False}),
    ("contains", {"type": "array", "items": {"type": "string"}, "contains": {"type": "string"}}),
    ("prefixItems", {"type": "array", "items": {"type": "string"}, "prefixItems": [{}]}),
    ("$anchor", {"type": "string", "$anchor": "here"}),
    ("$dynamicRef", {"$dynamicRef": "#x"}),
])
def test_keywords_without_a_translation_are_refused_naming_keyword_and_path(keyword, node) -> None:
    with pytest.raises(InvalidSchema) as err:
        check_schema(_obj(field=node))
    assert f"'{keyword}'" in err.value.message and "#/properties/field" in err.value.message


@pytest.mark.parametrize("schema, limit", [
    ({"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(5001)}}, "5000"),
    ({"type": "object", "properties": {"e": {"type": "string", "enum": [f"v{i}" for i in range(1001)]}}},
     "1000 enum values"),
    ({"type": "object", "properties": {"e": {"type": "string",
                                             "enum": [f"{i:03d}" + "x" * 60 for i in range(251)]}}},
     "15000 characters"),
    ({"type": "object", "properties": {f"{i:05d}" + "n" * 300: {"type": "string"} for i in range(400)}},
     "120000 characters"),
    ({"type": "array", "items": {"type": "string"}}, "root"),
    ({"type": "object", "anyOf": [{"properties": {"a": {"type": "string"}}}]}, "anyOf"),
])
def test_documented_limits_are_enforced_with_the_limit_in_the_message(schema, limit) -> None:
    with pytest.raises(InvalidSchema) as err:
        check_schema(schema)
    assert limit in err.value.message


def test_property_order_is_kept() -> None:
    # Keys are generated in schema order: a user who puts reasoning before the answer means it.
    strict = check_schema(_obj(zeta={"type": "string"}, alpha={"type": "string"},
                               middle={"type": "string"}))
    assert list(strict["properties"]) == ["zeta", "alpha", "middle"]
    assert strict["required"] == ["zeta", "alpha", "middle"]


def test_a_recursive_schema_with_an_end_is_accepted() -> None:
    node = {"type": "object", "properties": {"value": {"type": "string"},
                                             "next": {"$ref": "#/$defs/node"}}}
    strict = check_schema({**_obj(head={"$ref": "#/$defs/node"}), "$defs": {"node": node}})
    assert strict["$defs"]["node"]["properties"]["next"] == {
        "anyOf": [{"$ref": "#/$defs/node"}, {"type": "null"}]}


def test_answers_are_matched_in_linear_time_and_errors_never_quote_them() -> None:
    from schemas.strict import validation_errors

    schema = _obj(v={"anyOf": [{"type": "string", "pattern": "^(a+)+$"}, {"type": "integer"}]},
                  tags={"type": "array", "items": {"type": "object", "properties": {
                      "n": {"type": "integer"}}}, "uniqueItems": True})
    answer = {"v": "a" * 5000 + "!", "tags": [{"n": i} for i in range(20_000)] + [{"n": 1}]}
    errors = validation_errors(answer, schema)
    assert errors == ["/v: fails 'anyOf'", "/tags: fails 'uniqueItems': true"]
