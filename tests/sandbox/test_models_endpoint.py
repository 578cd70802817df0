"""``GET /v1/models``: the played model in OpenAI's shape, with the window (as Opper reports it)
and a shutdown date when the model has one; ``--profiles-file`` changes what is played."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.sandbox.conftest import chat, error_of, schema_body, serve

NANO = {"id": "gpt-4.1-nano", "object": "model", "created": 1744588800, "owned_by": "system",
        "context_length": 1_047_576}


def test_the_played_model_is_listed_and_retrievable(nano: str) -> None:
    assert httpx.get(f"{nano}/v1/models", timeout=10).json() == {"object": "list", "data": [NANO]}
    assert httpx.get(f"{nano}/v1/models/gpt-4.1-nano", timeout=10).json() == NANO


def test_another_model_does_not_exist(nano: str) -> None:
    error = error_of(httpx.get(f"{nano}/v1/models/gpt-4o", timeout=10), 404)
    assert error == {"message": "The model `gpt-4o` does not exist or you do not have access to it.",
                     "type": "invalid_request_error", "param": None, "code": "model_not_found"}


def test_a_profiles_file_adds_a_shutdown_date_and_narrows_a_model(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles.toml"
    # The service's own format ([profiles."id"]) is read too: one file configures both.
    profiles.write_text('[profiles."gpt-4.1-nano"]\nshutdown_date = 2026-10-23\n'
                        'context_window = 1000\nmax_output_tokens = 100\ntiers = {}\n')
    with serve(profiles_file=str(profiles)) as url:
        model = httpx.get(f"{url}/v1/models/gpt-4.1-nano", timeout=10).json()
        too_long = chat(url, schema_body("word " * 1000))
        unbounded = chat(url, schema_body("word " * 500)).json()
        too_much = chat(url, schema_body("hi", max_completion_tokens=101))
    assert model == {**NANO, "context_length": 1000, "shutdown_date": "2026-10-23"}
    assert error_of(too_long)["code"] == "context_length_exceeded"
    # Without max_completion_tokens, the answer still stops at the model's output cap.
    assert unbounded["choices"][0]["finish_reason"] == "length"
    assert unbounded["usage"]["completion_tokens"] == 100
    assert "This model supports at most 100 completion tokens" in error_of(too_much)["message"]


def test_a_profiles_file_adds_a_model_of_its_own(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles.toml"
    profiles.write_text('[models."local-small"]\ncontext_window = 9000\nmax_output_tokens = 2000\n'
                        'image_method = "patch"\nimage_multiplier = 1.0\nprice_input = 0.1\n'
                        'price_cached_input = 0.025\nprice_output = 0.4\n')
    with serve(profile="local-small", profiles_file=str(profiles)) as url:
        listed = httpx.get(f"{url}/v1/models", timeout=10).json()["data"]
    assert [(m["id"], m["context_length"]) for m in listed] == [("local-small", 9000)]


def test_the_reported_successor_bills_a_long_prompt_at_the_long_context_rates() -> None:
    """gpt-6-luna's page: over 272K input tokens, 2x input and 1.5x output for the whole request."""
    with serve(profile="gpt-6-luna", gateway_cost=True) as url:
        def cost(words: int) -> tuple[float, dict[str, int]]:
            response = chat(url, schema_body("word " * words, model="gpt-6-luna"))
            return float(response.headers["x-opper-cost"]), response.json()["usage"]

        short_cost, short = cost(1000)
        long_cost, long = cost(275_000)
    assert short["prompt_tokens"] < 272_000 < long["prompt_tokens"]
    assert short_cost == pytest.approx(
        (short["prompt_tokens"] * 0.10 + short["completion_tokens"] * 0.50) / 1e6, rel=1e-6)
    assert long_cost == pytest.approx(
        (long["prompt_tokens"] * 0.10 * 2 + long["completion_tokens"] * 0.50 * 1.5) / 1e6, rel=1e-6)
