"""Reading the endpoint's ``GET /v1/models`` through the official SDK, with the same base URL
and key as the model calls, bounded in time."""

from __future__ import annotations

import time
from datetime import date

import httpx2
import openai
from openai import OpenAI

from service.core.models_check import ModelReport, ServedModel, compare, parse_models
from service.core.profiles import ModelProfile
from service.core.settings import Settings


class EndpointUnreadable(Exception):
    """The list of models could not be read; the message says why (never the key)."""


def fetch_models(settings: Settings, timeout_s: float) -> list[ServedModel]:
    """The endpoint's models. A refused connection is tried again until ``timeout_s`` has passed
    (the sandbox and the API start side by side); a slow answer is not waited for beyond it."""
    deadline = time.monotonic() + timeout_s
    with OpenAI(base_url=settings.resolved_base_url, api_key=settings.resolved_api_key or "sandbox",
                max_retries=0, timeout=timeout_s) as client:
        while True:
            try:
                raw = client.get("/models", cast_to=httpx2.Response,
                                 options={"timeout": max(0.1, deadline - time.monotonic())})
                return parse_models(raw.json())
            except openai.APIStatusError as exc:
                raise EndpointUnreadable(f"HTTP {exc.status_code}") from None
            except openai.APITimeoutError:
                raise EndpointUnreadable(f"no answer within {timeout_s:g} s") from None
            except openai.APIConnectionError:
                if time.monotonic() + 0.2 >= deadline:
                    raise EndpointUnreadable(f"cannot connect within {timeout_s:g} s") from None
                time.sleep(0.2)
            except ValueError:
                raise EndpointUnreadable("the answer is not JSON") from None


def model_report(settings: Settings, profile: ModelProfile, timeout_s: float,
                 today: date | None = None) -> tuple[ModelReport, list[ServedModel] | None]:
    """The report on the configured model, and the endpoint's list (None when unreadable)."""
    models: list[ServedModel] | None
    why = None
    try:
        models = fetch_models(settings, timeout_s)
    except EndpointUnreadable as exc:
        models, why = None, str(exc)
    report = compare(profile, settings.resolved_model_id, settings.resolved_base_url, models,
                     today or date.today(), why)
    return report, models
