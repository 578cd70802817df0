"""What ``GET /v1/models`` says against the profile: shapes of OpenAI, Opper and OpenRouter,
context lengths, shutdown dates, and when the service refuses to start."""

from __future__ import annotations

from datetime import date

from service.core.models_check import Level, ModelReport, compare, find_model, parse_models
from service.core.profiles import get_profile

TODAY = date(2026, 11, 26)
NANO = get_profile("gpt-4.1-nano")
SANDBOX = "http://127.0.0.1:8001/v1"
OPENAI = "https://api.openai.com/v1"
OPPER = "https://api.opper.ai/v3/compat"


def codes(report: ModelReport) -> set[str]:
    return {f.code for f in report.findings}


def test_openai_opper_and_openrouter_shapes_are_read() -> None:
    # OpenAI's example list (openai-openapi, GET /models), Opper's compat context_length,
    # OpenRouter's top_provider.context_length and expiration_date.
    models = parse_models({"object": "list", "data": [
        {"id": "model-id-0", "object": "model", "created": 1686935002, "owned_by": "o",
         "shutdown_date": None},
        {"id": "model-id-2", "object": "model", "created": 1686935002, "owned_by": "openai",
         "shutdown_date": "2026-10-23"},
        {"id": "openai/gpt-4.1-nano", "object": "model", "context_length": 1047576},
        {"id": "openai/gpt-6-luna", "top_provider": {"context_length": 1050000},
         "expiration_date": None},
        {"object": "model"}, "nonsense"]})
    assert [m.id for m in models] == ["model-id-0", "model-id-2", "openai/gpt-4.1-nano",
                                      "openai/gpt-6-luna"]
    assert models[0].shutdown_date is None and models[1].shutdown_date == date(2026, 10, 23)
    assert models[2].context_length == 1_047_576 and models[3].context_length == 1_050_000
    assert parse_models({"error": "no"}) == parse_models(None) == []


def test_a_gateway_prefix_does_not_hide_the_model() -> None:
    models = parse_models({"data": [{"id": "gpt-4.1-nano"}, {"id": "openai/gpt-4.1"}]})
    found = find_model(models, "openai/gpt-4.1-nano")
    assert found is not None and found.id == "gpt-4.1-nano"
    other = find_model(models, "gpt-4.1")
    assert other is not None and other.id == "openai/gpt-4.1"
    assert find_model(models, "gpt-4.1-mini") is None


def test_the_default_sandbox_still_starts_on_gpt_4_1_nano() -> None:
    # The sandbox lists nano with its window and no shutdown date (a gateway, not OpenAI).
    models = parse_models({"data": [{"id": "gpt-4.1-nano", "context_length": 1047576}]})
    report = compare(NANO, "gpt-4.1-nano", SANDBOX, models, TODAY)
    assert not report.retired
    assert {"listed", "context_matches", "shutdown_elsewhere"} <= codes(report)


def test_the_opper_preset_still_starts_when_its_list_cannot_be_read() -> None:
    report = compare(NANO, "openai/gpt-4.1-nano", OPPER, None, TODAY, "no answer within 3 s")
    assert not report.retired and report.listed is None
    assert {"models_unreadable", "shutdown_elsewhere"} <= codes(report)


def test_openais_own_api_is_refused_after_the_profiles_shutdown_date() -> None:
    report = compare(NANO, "gpt-4.1-nano", OPENAI, None, TODAY, "no answer")
    assert report.retired
    before = compare(NANO, "gpt-4.1-nano", OPENAI, None, date(2026, 10, 22), "no answer")
    assert not before.retired and "shutdown_announced" in codes(before)


def test_an_endpoint_that_reports_a_passed_shutdown_date_is_refused_anywhere() -> None:
    models = parse_models({"data": [{"id": "gpt-4.1-nano", "shutdown_date": "2026-10-23"}]})
    report = compare(NANO, "gpt-4.1-nano", SANDBOX, models, TODAY)
    assert report.retired
    (error,) = [f for f in report.findings if f.level == Level.ERROR]
    assert "2026-10-23" in error.message
    future = parse_models({"data": [{"id": "gpt-4.1-nano", "shutdown_date": "2027-01-14"}]})
    later = compare(NANO, "gpt-4.1-nano", SANDBOX, future, TODAY)
    assert not later.retired
    assert any("2027-01-14" in f.message and "49 days" in f.message for f in later.findings)


def test_a_context_length_unlike_the_profiles_is_said_with_both_numbers() -> None:
    models = parse_models({"data": [{"id": "gpt-4.1-nano", "context_length": 128000}]})
    report = compare(NANO, "gpt-4.1-nano", SANDBOX, models, TODAY)
    (mismatch,) = [f for f in report.findings if f.code == "context_mismatch"]
    assert mismatch.level == Level.WARNING
    assert "128,000" in mismatch.message and "1,047,576" in mismatch.message
    assert "refused" in mismatch.message  # smaller than the profile: calls near it will fail
    assert not report.retired


def test_a_model_the_endpoint_does_not_list_is_a_warning() -> None:
    models = parse_models({"data": [{"id": "gpt-4o"}]})
    report = compare(NANO, "gpt-4.1-nano", SANDBOX, models, TODAY)
    assert report.listed is False and "not_listed" in codes(report) and not report.retired
    assert report.as_json()["listed"] is False
