"""Requests the API refuses are refused by the sandbox, with the API's body.

Texts marked "verbatim" in docs/sandbox.md were quoted from API answers in public issues
(research notes model-truth §1.3, §4); the others are the sandbox's wording of a documented rule.
"""

from __future__ import annotations

import base64
import copy
import io
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image

from tests.sandbox.conftest import SCHEMA, chat, error_of, image_url, schema_body, serve


def obj(**props: Any) -> dict[str, Any]:
    """A strict object schema: every property required, no additional properties."""
    return {"type": "object", "additionalProperties": False, "required": list(props),
            "properties": props}


STRING = {"type": "string"}


def test_an_unknown_parameter_is_unrecognized(nano: str) -> None:
    error = error_of(chat(nano, schema_body("hi", thinking={"type": "enabled"})))
    assert error == {"message": "Unrecognized request argument supplied: thinking",
                     "type": "invalid_request_error", "param": None, "code": None}
    error = error_of(chat(nano, schema_body("hi", top_k=3, thinking=True)))
    assert error["message"] == "Unrecognized request arguments supplied: thinking, top_k"


def test_a_request_without_a_model_is_refused(nano: str) -> None:
    body = schema_body("hi")
    del body["model"]
    assert error_of(chat(nano, body)) == {"message": "you must provide a model parameter",
                                          "type": "invalid_request_error", "param": None,
                                          "code": None}


def test_messages_must_be_given_and_not_empty(nano: str) -> None:
    assert error_of(chat(nano, {"model": "gpt-4.1-nano"}))["code"] == "missing_required_parameter"
    error = error_of(chat(nano, {"model": "gpt-4.1-nano", "messages": []}))
    assert error["code"] == "empty_array" and error["param"] == "messages"
    error = error_of(chat(nano, {"model": "gpt-4.1-nano",
                                 "messages": [{"role": "robot", "content": "hi"}]}))
    assert error["param"] == "messages[0].role" and error["code"] == "invalid_value"


@pytest.mark.parametrize("param", ["max_completion_tokens", "max_tokens"])
def test_an_output_cap_above_the_models_is_too_large(nano: str, param: str) -> None:
    error = error_of(chat(nano, schema_body("hi", None, **{param: 32_769})))
    assert error == {"message": f"{param} is too large: 32769. This model supports at most 32768 "
                                "completion tokens, whereas you provided 32769.",
                     "type": "invalid_request_error", "param": param, "code": None}
    assert chat(nano, schema_body("hi", None, **{param: 32_768})).status_code == 200


@pytest.fixture(scope="module")
def luna() -> Iterator[str]:
    """The reported successor: a reasoning model."""
    with serve(profile="gpt-6-luna") as url:
        yield url


def test_a_reasoning_model_refuses_temperature_unless_reasoning_is_off(luna: str) -> None:
    error = error_of(chat(luna, schema_body("hi", temperature=0)))
    assert error == {"message": "Unsupported value: 'temperature' does not support 0 with this "
                                "model. Only the default (1) value is supported.",
                     "type": "invalid_request_error", "param": "temperature",
                     "code": "unsupported_value"}
    assert chat(luna, schema_body("hi", temperature=1)).status_code == 200
    assert chat(luna, schema_body("hi", temperature=0, reasoning_effort="none")).status_code == 200


def test_a_reasoning_model_refuses_max_tokens_and_unknown_efforts(luna: str) -> None:
    error = error_of(chat(luna, schema_body("hi", max_tokens=100)))
    assert error == {"message": "Unsupported parameter: 'max_tokens' is not supported with this "
                                "model. Use 'max_completion_tokens' instead.",
                     "type": "invalid_request_error", "param": "max_tokens",
                     "code": "unsupported_parameter"}
    error = error_of(chat(luna, schema_body("hi", reasoning_effort="minimal")))
    assert error["message"] == ("Unsupported value: 'minimal' is not supported with the "
                                "'gpt-6-luna' model. Supported values are: 'none', 'low', "
                                "'medium', 'high', 'xhigh', and 'max'.")
    assert error["code"] == "unsupported_value"


def test_a_reasoning_model_takes_function_tools_only_without_reasoning(luna: str) -> None:
    body = {"model": "gpt-6-luna", "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "record", "parameters": SCHEMA,
                                                        "strict": True}}]}
    error = error_of(chat(luna, body))
    assert error["message"] == ("Function tools with reasoning_effort are not supported for "
                                "gpt-6-luna in /v1/chat/completions. To use function tools, use "
                                "/v1/responses or set reasoning_effort to 'none'.")
    assert error["param"] == "reasoning_effort"
    assert chat(luna, {**body, "reasoning_effort": "none"}).status_code == 200


def test_a_non_reasoning_model_refuses_reasoning_effort(nano: str) -> None:
    error = error_of(chat(nano, schema_body("hi", reasoning_effort="low")))
    assert error["code"] == "unsupported_parameter" and error["param"] == "reasoning_effort"


PREFIX = "Invalid schema for response_format 'x': "
REQUIRED = "'required' is required to be supplied and to be an array including every key in properties."

SCHEMA_CASES = [
    ("root-array", {"type": "array", "items": STRING},
     "schema must be a JSON Schema of 'type: \"object\"', got 'type: \"array\"'."),
    ("root-anyof", {"anyOf": [obj(a=STRING), obj(b=STRING)]},
     "schema must have type 'object' and not have 'oneOf'/'anyOf'/'allOf'/'enum'/'not' at the top "
     "level."),
    ("missing-required", obj(org={**obj(name=STRING), "properties": {"name": STRING, "roles": STRING}}),
     f"In context=('properties', 'org'), {REQUIRED} Missing 'roles'."),
    ("extra-required", {**obj(id=STRING), "required": ["id", "dir"]},
     f"In context=(), {REQUIRED} Extra required key 'dir' supplied."),
    ("no-additional-properties", {k: v for k, v in obj(id=STRING).items()
                                  if k != "additionalProperties"},
     "In context=(), 'additionalProperties' is required to be supplied and to be false."),
    ("array-without-items", obj(tags={"type": "array"}),
     "In context=('properties', 'tags'), array schema missing items."),
    ("ref-with-siblings", {**obj(a={"$ref": "#/$defs/s", "description": "d"}), "$defs": {"s": STRING}},
     "context=('properties', 'a'), $ref cannot have keywords {'description'}."),
    ("unknown-format", obj(link={"type": "string", "format": "uri"}),
     "In context=('properties', 'link'), format 'uri' is not permitted."),
    ("empty-enum", obj(kind={"type": "string", "enum": []}),
     "In context=('properties', 'kind'), 'enum' must be a non-empty array."),
    ("dangling-ref", obj(a={"$ref": "#/$defs/missing"}),
     "In context=('properties', 'a'), reference to component '#/$defs/missing' which was not "
     "found in the schema."),
]


@pytest.mark.parametrize("schema, detail", [c[1:] for c in SCHEMA_CASES],
                         ids=[c[0] for c in SCHEMA_CASES])
def test_strict_schema_rules(nano: str, schema: dict[str, Any], detail: str) -> None:
    error = error_of(chat(nano, schema_body("hi", schema)))
    assert error == {"message": PREFIX + detail, "type": "invalid_request_error",
                     "param": "response_format", "code": None}


@pytest.mark.parametrize("keyword, value", [
    ("default", "x"), ("nullable", True), ("oneOf", [STRING]), ("allOf", [STRING]),
    ("not", STRING), ("$anchor", "a"), ("dependencies", {}), ("unevaluatedItems", False),
    ("uniqueItems", True), ("patternProperties", {}), ("if", STRING), ("examples", ["x"]),
])
def test_keywords_outside_the_supported_list_are_not_permitted(nano: str, keyword: str,
                                                               value: Any) -> None:
    schema = obj(a={"type": "string", keyword: value})
    error = error_of(chat(nano, schema_body("hi", schema)))
    assert error["message"] == PREFIX + f"In context=('properties', 'a'), '{keyword}' is not permitted."


def test_every_supported_keyword_is_accepted(nano: str) -> None:
    schema = {**obj(
        when={"type": "string", "format": "date-time", "description": "d", "title": "t"},
        code={"type": "string", "pattern": "^[A-Z]+$", "minLength": 1, "maxLength": 9},
        n={"type": "number", "multipleOf": 0.5, "minimum": 0, "maximum": 10,
           "exclusiveMinimum": -1, "exclusiveMaximum": 11},
        tags={"type": "array", "items": {"type": "string", "enum": ["a", "b"]}, "minItems": 0,
              "maxItems": 3},
        kind={"const": "invoice"},
        maybe={"anyOf": [{"type": "integer"}, {"type": "null"}]},
        node={"$ref": "#/$defs/node"},
        again={"type": "array", "items": {"$ref": "#"}},
    ), "$defs": {"node": obj(next={"anyOf": [{"$ref": "#/$defs/node"}, {"type": "null"}]})}}
    response = chat(nano, schema_body("hi", schema))
    assert response.status_code == 200, response.text


def nested(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = obj(leaf=STRING)
    for _ in range(levels - 1):
        schema = obj(n=schema)
    return schema


def test_nesting_is_limited_to_10_levels(nano: str) -> None:
    assert chat(nano, schema_body("hi", nested(10))).status_code == 200
    error = error_of(chat(nano, schema_body("hi", nested(11))))
    assert error["message"] == PREFIX + "11 levels of nesting exceeds limit of 10."


def test_a_schema_holds_at_most_5000_properties(nano: str) -> None:
    many = {f"p{i:04d}": {"type": "boolean"} for i in range(5000)}
    assert chat(nano, schema_body("hi", obj(**many))).status_code == 200
    error = error_of(chat(nano, schema_body("hi", obj(**many, extra={"type": "boolean"}))))
    assert error["message"] == PREFIX + "5001 object properties exceeds limit of 5000."


def consts(total: int) -> dict[str, Any]:
    """100 properties named c00..c99 (300 characters) whose const values bring the names and
    values to ``total`` characters."""
    each, rest = divmod(total - 300, 100)
    return obj(**{f"c{i:02d}": {"type": "string", "const": "v" * (each + (i < rest))}
                  for i in range(100)})


def test_names_and_values_are_limited_to_120000_characters(nano: str) -> None:
    assert chat(nano, schema_body("hi", consts(120_000))).status_code == 200
    error = error_of(chat(nano, schema_body("hi", consts(120_001))))
    assert error["message"] == PREFIX + (
        "total string length of property names, definition names, enum values and const values "
        "is 120001, which exceeds limit of 120000.")


def enums(values: int) -> dict[str, Any]:
    sizes = [250] * (values // 250) + ([values % 250] if values % 250 else [])
    return obj(**{f"e{i}": {"type": "string", "enum": [f"v{j}" for j in range(n)]}
                  for i, n in enumerate(sizes)})


def test_a_schema_holds_at_most_1000_enum_values(nano: str) -> None:
    assert chat(nano, schema_body("hi", enums(1000))).status_code == 200
    error = error_of(chat(nano, schema_body("hi", enums(1001))))
    assert error["message"] == PREFIX + "1001 enum values exceeds limit of 1000."


def test_a_string_enum_over_250_values_is_limited_to_15000_characters(nano: str) -> None:
    def enum(count: int, width: int) -> dict[str, Any]:
        return obj(kind={"type": "string", "enum": [f"{j:0{width}d}" for j in range(count)]})

    assert chat(nano, schema_body("hi", enum(250, 100))).status_code == 200  # 250 values: no limit
    assert chat(nano, schema_body("hi", enum(251, 59))).status_code == 200  # 14,809 characters
    error = error_of(chat(nano, schema_body("hi", enum(251, 60))))  # 15,060 characters
    assert error["message"] == PREFIX + (
        "In context=('properties', 'kind'), enum has 251 string values with a total length of "
        "15060 characters, which exceeds the limit of 15000 for enums with more than 250 values.")


def test_a_strict_tool_is_checked_like_a_schema_and_named_as_a_function(nano: str) -> None:
    body: dict[str, Any] = {"model": "gpt-4.1-nano", "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {
                "name": "record", "parameters": obj(a={"type": "string", "default": "x"}),
                "strict": True}}]}
    assert error_of(chat(nano, body)) == {
        "message": "Invalid schema for function 'record': In context=('properties', 'a'), "
                   "'default' is not permitted.",
        "type": "invalid_request_error", "param": "tools[0].function.parameters",
        "code": "invalid_function_parameters"}
    loose = copy.deepcopy(body)
    loose["tools"][0]["function"]["strict"] = False  # without strict, no schema rules
    assert chat(nano, loose).status_code == 200


def test_json_object_needs_the_word_json_in_the_messages(nano: str) -> None:
    body: dict[str, Any] = {"model": "gpt-4.1-nano", "messages": [{"role": "user", "content": "hi"}],
                            "response_format": {"type": "json_object"}}
    error = error_of(chat(nano, body))
    assert error["message"] == ("'messages' must contain the word 'json' in some form, to use "
                                "'response_format' of type 'json_object'.")
    body["messages"][0]["content"] = "Answer in JSON."
    assert chat(nano, body).status_code == 200


def image_body(*urls: str, detail: str = "auto") -> dict[str, Any]:
    parts = [{"type": "image_url", "image_url": {"url": u, "detail": detail}} for u in urls]
    return {"model": "gpt-4.1-nano",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Look."}, *parts]}]}


def test_at_most_500_images_per_request(nano: str) -> None:
    tiny = image_url(8, 8)
    assert chat(nano, image_body(*[tiny] * 500)).status_code == 200
    error = error_of(chat(nano, image_body(*[tiny] * 501)))
    assert error["message"] == ("Too many images in request: 501 were supplied, but at most 500 "
                                "are allowed.")


def padded_png(raw_bytes: int) -> str:
    """A valid PNG followed by padding (readers stop at IEND), ``raw_bytes`` in all."""
    out = io.BytesIO()
    Image.new("1", (8, 8)).save(out, "PNG")
    data = out.getvalue()
    return "data:image/png;base64," + base64.b64encode(data + b"\0" * (raw_bytes - len(data))).decode()


def test_the_50_mb_image_payload_counts_the_base64_on_the_wire(nano: str) -> None:
    # 37.5 MB of image is 50.0 MB of base64: raw bytes under the cap do not make a request fit.
    assert chat(nano, image_body(padded_png(37_400_000))).status_code == 200
    error = error_of(chat(nano, image_body(padded_png(37_600_000))))
    assert error["message"] == "Total image size is 50.13MB, which exceeds the allowed limit of 50MB."


def encoded(fmt: str, **save: Any) -> bytes:
    out = io.BytesIO()
    frames = [Image.new("L", (8, 8), c) for c in (0, 255)]
    frames[0].save(out, fmt, **save)
    return out.getvalue()


UNSUPPORTED = ("You uploaded an unsupported image. Please make sure your image has of one the "
               "following formats: ['png', 'jpeg', 'gif', 'webp'].")


def data_url(media_type: str, raw: bytes) -> str:
    return f"data:{media_type};base64,{base64.b64encode(raw).decode()}"


@pytest.mark.parametrize("url, message", [
    (data_url("text/plain", b"hello"), "Invalid MIME type. Only image types are supported."),
    (data_url("image/bmp", encoded("BMP")), UNSUPPORTED),
    (data_url("image/png", encoded("BMP")), UNSUPPORTED),
    (data_url("image/gif", encoded("GIF", save_all=True,
                                   append_images=[Image.new("L", (8, 8), 255)])), UNSUPPORTED),
], ids=["not-an-image-type", "bmp", "bmp-labelled-png", "animated-gif"])
def test_images_are_png_jpeg_webp_or_still_gif(nano: str, url: str, message: str) -> None:
    error = error_of(chat(nano, image_body(url)))
    assert error["message"] == message and error["code"] == "invalid_image_format"


def test_supported_formats_pass_by_their_bytes(nano: str) -> None:
    for url in (data_url("image/png", encoded("JPEG")), data_url("image/webp", encoded("WEBP")),
                data_url("image/gif", encoded("GIF")), image_url(8, 8, "JPEG")):
        assert chat(nano, image_body(url)).status_code == 200


def test_detail_is_low_high_or_auto(nano: str) -> None:
    error = error_of(chat(nano, image_body(image_url(8, 8), detail="original")))
    assert error == {"message": "Invalid value: 'original'. Supported values are: 'low', 'high', "
                                "and 'auto'.",
                     "type": "invalid_request_error",
                     "param": "messages[0].content[1].image_url.detail", "code": "invalid_value"}


def test_a_remote_image_cannot_be_downloaded_offline(nano: str) -> None:
    error = error_of(chat(nano, image_body("http://127.0.0.1:9/page.png")))
    assert error["code"] == "invalid_image_url"
