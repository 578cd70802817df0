"""Model profiles: the published and reported figures, price tiers, what a request carries per
model, the cheapest plan's budget, the image payload as sent."""

from __future__ import annotations

import base64
from datetime import date
from pathlib import Path

import pytest

from service.core.profiles import (
    ProfileError,
    cheapest_budget,
    fit_request,
    get_profile,
    load_profiles,
    request_options,
    wire_image_bytes,
)
from service.sandbox.models import load_models

LUNA = get_profile("gpt-6-luna")
NANO = get_profile("gpt-4.1-nano")


def test_the_reported_successor_has_its_published_figures_marked_as_reported() -> None:
    # GPT-6 Luna's model page (ja-JP copy) and Vercel AI Gateway: 1,050,000 / 128,000 /
    # $0.10 in, $0.01 cached, $0.50 out; reasoning on by default (medium).
    assert (LUNA.context_window, LUNA.max_output_tokens) == (1_050_000, 128_000)
    assert (LUNA.price_input, LUNA.price_cached_input, LUNA.price_output) == (0.10, 0.01, 0.50)
    assert LUNA.status == "reported" and LUNA.sources
    assert LUNA.reasoning and LUNA.default_reasoning_effort == "medium"
    assert "max_tokens" in LUNA.unsupported_parameters
    assert NANO.status == "published" and NANO.shutdown_date == date(2026, 10, 23)


def test_a_prompt_over_272k_tokens_bills_the_whole_request_at_the_long_context_rates() -> None:
    # "Prompts with >272K input tokens are priced at 2x input and 1.5x output for the full
    # request" (and cache reads at 2x on GPT-6 Luna's page).
    assert LUNA.cost_usd(272_000, 0, 1_000) == pytest.approx((272_000 * 0.10 + 1_000 * 0.50) / 1e6)
    assert LUNA.cost_usd(272_001, 0, 1_000) == pytest.approx((272_001 * 0.20 + 1_000 * 0.75) / 1e6)
    assert LUNA.cost_usd(300_000, 100_000, 0) == pytest.approx((200_000 * 0.20 + 100_000 * 0.02) / 1e6)
    # No tier on gpt-4.1-nano: a million tokens cost a million times the rate.
    assert NANO.cost_usd(1_000_000, 0, 0) == pytest.approx(0.10)


def test_the_service_prices_a_call_as_the_sandbox_bills_it() -> None:
    """Two implementations of the tier rule (the sandbox's is the referee) agree around the
    threshold and far from it."""
    sandbox = load_models()["gpt-6-luna"]
    for prompt, cached, completion in [(1, 0, 1), (271_999, 1_024, 500), (272_000, 0, 9),
                                       (272_001, 0, 9), (272_001, 270_000, 128_000),
                                       (1_049_000, 500_000, 1_000)]:
        assert LUNA.cost_usd(prompt, cached, completion) == pytest.approx(
            sandbox.cost_usd(prompt, cached, completion), rel=1e-12)


@pytest.mark.parametrize("model", ["gpt-4.1-nano", "gpt-4.1-mini", "gpt-4.1", "gpt-6-luna"])
def test_image_tokens_agree_with_the_sandbox_for_every_shipped_model(model: str) -> None:
    profile, sandbox = get_profile(model), load_models()[model]
    sizes = [(64, 64), (480, 320), (512, 512), (640, 480), (1024, 1024), (1275, 1650),
             (1800, 2400), (2048, 4096), (3000, 100), (4032, 3024), (100, 5000)]
    for width, height in sizes:
        for detail in ("low", "high", "auto"):
            assert profile.image_tokens(width, height, detail) == \
                sandbox.image_tokens(width, height, detail), (width, height, detail)


def test_a_patch_count_times_the_multiplier_is_rounded_up_without_float_noise() -> None:
    # 480 x 320 is 15 x 10 = 150 patches; x 1.62 is 243 exactly, which binary floating point
    # writes 243.00000000000003: rounding that up would bill 244.
    assert get_profile("gpt-4.1-mini").image_tokens(480, 320) == 243
    # The vision guide's worked examples (patch budget 1536): 1024 and 1452 patches.
    assert NANO.image_tokens(1024, 1024) == 2520  # ceil(1024 x 2.46)
    assert NANO.image_tokens(1800, 2400) == 3572  # ceil(1452 x 2.46)


def test_the_image_payload_is_counted_as_base64_on_the_wire() -> None:
    raw = b"\xff\xd8" + bytes(range(256)) * 40
    url = "data:image/jpeg;base64," + base64.b64encode(raw).decode()
    assert wire_image_bytes(len(raw)) == len(url)
    # The planner's old cap, 48 MiB of raw bytes, is 67 MB as sent: over the API's 50 MB.
    assert wire_image_bytes(48 * 1024 * 1024) > 67_000_000 > NANO.max_image_payload_bytes
    assert wire_image_bytes(37_499_000) <= 50_000_000 < wire_image_bytes(37_500_001)


def test_a_model_without_reasoning_gets_temperature_0_and_strict_tools_no_parallel_calls() -> None:
    assert request_options(NANO, "json_schema") == {"temperature": 0}
    assert request_options(NANO, "tools") == {"temperature": 0, "parallel_tool_calls": False}
    body = {"model": "m", "messages": [], "reasoning_effort": "low", "temperature": 0}
    assert fit_request(NANO, body) == {"model": "m", "messages": [], "temperature": 0}


def test_a_reasoning_model_gets_an_effort_and_never_a_temperature() -> None:
    assert request_options(LUNA, "json_schema") == {"reasoning_effort": "low"}
    body = {"model": "m", "messages": [], "temperature": 0, "top_p": 1, "max_tokens": 10,
            "max_completion_tokens": 10}
    assert fit_request(LUNA, body) == {"model": "m", "messages": [], "max_completion_tokens": 10,
                                       "reasoning_effort": "low"}


def test_function_tools_on_gpt_6_luna_go_without_reasoning() -> None:
    # "In Chat Completions, function calling works only with reasoning_effort none".
    assert request_options(LUNA, "tools") == {"reasoning_effort": "none", "parallel_tool_calls": False}
    body = {"model": "m", "messages": [], "tools": [{"type": "function"}],
            "reasoning_effort": "medium"}
    assert fit_request(LUNA, body)["reasoning_effort"] == "none"


def test_without_price_tiers_the_cheapest_budget_is_the_fewest_calls() -> None:
    assert cheapest_budget(NANO, budget=900_000, overhead=1_000, page_tokens=700_000,
                           output_per_call=1_000, margin=2_048) == 900_000


def test_calls_under_the_threshold_are_cheaper_than_one_call_above_it() -> None:
    budget = 1_050_000 - 128_000 - 1_000 - 2_048
    cap = cheapest_budget(LUNA, budget=budget, overhead=1_000, page_tokens=500_000,
                          output_per_call=1_000, margin=2_048)
    assert cap == 272_000 - 1_000 - 2_048
    one = LUNA.cost_usd(501_000, 0, 1_000)
    two = 2 * LUNA.cost_usd(251_000, 0, 1_000)
    assert two < one / 1.9


def test_the_threshold_is_not_worth_it_when_every_call_repeats_a_large_overhead() -> None:
    # 260K tokens of instructions and schema in every call, 14K of pages, long answers: two
    # calls under the threshold pay the overhead and the answer twice, more than 2x once.
    assert cheapest_budget(LUNA, budget=900_000, overhead=260_000, page_tokens=14_000,
                           output_per_call=10_000, margin=2_048) == 900_000


def test_a_profiles_file_may_carry_the_sandboxs_keys_and_spelling(tmp_path: Path) -> None:
    extra = tmp_path / "profiles.toml"
    extra.write_text('[models."gpt-4.1-nano"]\nmessage_overhead = 4\nname_overhead = 2\n'
                     'created = 1\nshutdown_date = 2026-10-23\n'
                     '[profiles."gpt-6-luna"]\nlong_context_threshold = 20000\n')
    profiles = load_profiles(extra)
    assert profiles["gpt-4.1-nano"].message_overhead == 4
    assert profiles["gpt-4.1-nano"].shutdown_date == date(2026, 10, 23)
    assert profiles["gpt-6-luna"].long_context_threshold == 20_000
    assert profiles["gpt-6-luna"].context_window == 1_050_000  # merged field by field


def test_an_unknown_key_is_refused_with_the_file_model_and_key(tmp_path: Path) -> None:
    extra = tmp_path / "profiles.toml"
    extra.write_text('[profiles."gpt-4.1-nano"]\ncontext_windw = 10\n')
    with pytest.raises(ProfileError, match=r"profiles.toml.*gpt-4.1-nano.*context_windw"):
        load_profiles(extra)
    extra.write_text('[profiles."gpt-4.1-nano"]\nshutdown_date = "soon"\n')
    with pytest.raises(ProfileError, match="shutdown_date must be a date"):
        load_profiles(extra)
