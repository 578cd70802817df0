import pytest

from service.core import tokens
from service.core.profiles import get_profile, load_profiles
from service.core.tokens import O200K_SHA256, TokenizerUnavailable, count_text, get_encoding, patch_grid


def test_o200k_base_loads_offline_and_counts_exactly() -> None:
    enc = get_encoding()
    assert enc.name == "o200k_base" and enc.n_vocab == 200019
    assert count_text("hello world") == 2
    assert enc.decode(enc.encode_ordinary("Longdoc counts tokens exactly.")) == \
        "Longdoc counts tokens exactly."


def test_the_bpe_file_is_checked_against_its_sha256() -> None:
    assert tokens._load_ranks("o200k_base", O200K_SHA256)
    with pytest.raises(TokenizerUnavailable):
        tokens._load_ranks("o200k_base", "0" * 64)


@pytest.mark.parametrize("size, patches", [((1024, 1024), 1024), ((1800, 2400), 1452), ((64, 64), 4),
                                           ((4032, 3024), 1452)])
def test_patch_formula_matches_the_vision_guide(size, patches) -> None:
    cols, rows = patch_grid(*size)
    assert cols * rows == patches


def test_profiles_are_data_and_a_deployment_can_override_them(tmp_path) -> None:
    assert set(load_profiles()) >= {"gpt-4.1-nano", "gpt-4.1-mini", "gpt-4.1"}
    nano = get_profile("gpt-4.1-nano")
    assert nano.context_window == 1_047_576 and nano.max_output_tokens == 32_768
    assert nano.cost_usd(1_000_000, 0, 0) == pytest.approx(0.10)
    assert nano.cost_usd(1_000_000, 1_000_000, 0) == pytest.approx(0.025)
    assert nano.tiers["tier1"].tpm == 200_000
    extra = tmp_path / "profiles.toml"
    extra.write_text('[profiles."gpt-4.1-nano"]\nprice_input = 0.05\n'
                     '[profiles."local-model"]\ncontext_window = 32000\nmax_output_tokens = 4096\n'
                     'tokenizer = "o200k_base"\nimage_method = "patch"\nprice_input = 0\n'
                     'price_cached_input = 0\nprice_output = 0\n')
    assert get_profile("gpt-4.1-nano", extra).price_input == 0.05
    assert get_profile("gpt-4.1-nano", extra).context_window == 1_047_576
    assert get_profile("local-model", extra).context_window == 32_000


def test_the_service_counts_the_cookbook_examples_as_the_api_reported() -> None:
    """openai-cookbook "How to count tokens with tiktoken": the API reported 124 prompt tokens
    for the six-message example and 101 for the weather tool (gpt-4o family, o200k_base)."""
    from service.core.profiles import get_profile
    from service.core.prompt import count_request

    profile = get_profile("gpt-4.1-nano")
    six = [
        {"role": "system", "content": "You are a helpful, pattern-following assistant that translates "
         "corporate jargon into plain English."},
        {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line "
         "growth."},
        {"role": "system", "name": "example_assistant", "content": "Things working well together will "
         "increase revenue."},
        {"role": "system", "name": "example_user", "content": "Let's circle back when we have more "
         "bandwidth to touch base on opportunities for increased leverage."},
        {"role": "system", "name": "example_assistant", "content": "Let's talk later when we're less busy "
         "about how to do better."},
        {"role": "user", "content": "This late pivot means we don't have time to boil the ocean for the "
         "client deliverable."},
    ]
    assert count_request({"messages": six}, profile) == 124
    tools = [{"type": "function", "function": {
        "name": "get_current_weather", "description": "Get the current weather in a given location",
        "parameters": {"type": "object", "properties": {
            "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
            "unit": {"type": "string", "description": "The unit of temperature to return",
                     "enum": ["celsius", "fahrenheit"]}},
            "required": ["location"]}}}]
    messages = [
        {"role": "system",
         "content": "You are a helpful assistant that can answer to questions about the weather."},
        {"role": "user", "content": "What's the weather like in San Francisco?"},
    ]
    assert count_request({"messages": messages, "tools": tools}, profile) == 101
