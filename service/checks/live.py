"""``longdoc check``: the live check a user with a key runs before trusting the service.

It sends the requests the workers send (the same builders, the same client, the same
``LONGDOC_MODEL_*`` settings): one plain text, one image at each detail, one strict tool and one
json_schema request, each predicted by the service's counter before it leaves and compared with
the ``prompt_tokens`` the endpoint reports. Optionally (``--probe-window``, it costs money) it
fills the profile's window to the token and sends one token more, which must be refused.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from schemas.strict import check_schema
from service.core.profiles import ModelProfile, fit_request
from service.core.prompt import count_request, format_fields, page_header, system_text
from service.core.settings import Settings
from workers.model_client import ModelCallFailed, ModelClient, RequestTooLarge

# A small invoice-like page and schema: what an extraction looks like, at a fraction of a cent.
SAMPLE_TEXT = ("INVOICE INV-0042\nAcme Corporation, 12 Harbour Road, Leith\nDate: 2026-11-02\n"
               "1 x Annual support plan ........ 1,000.00 EUR\n"
               "1 x On-site training day ....... 250.00 EUR\nTotal due: 1,250.00 EUR\n")
SAMPLE_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["invoice_number", "vendor", "total"],
    "properties": {
        "invoice_number": {"type": "string", "description": "as printed"},
        "vendor": {"type": "string"},
        "total": {"type": "number", "description": "amount due"},
        "currency": {"type": "string", "enum": ["EUR", "USD", "GBP"]},
    },
}
IMAGE_SIZE = (1800, 2400)  # the vision guide's worked example: shrunk to 1452 patches
ANSWER_TOKENS = 32  # enough for usage to be reported; the answer itself is not checked
DETAILS = ("low", "high", "auto")


@dataclass
class CaseResult:
    name: str
    predicted: int | None
    reported: int | None = None
    error: str | None = None
    note: str = ""
    cost_usd: float = 0.0

    @property
    def difference(self) -> int | None:
        if self.predicted is None or self.reported is None:
            return None
        return self.reported - self.predicted

    def passed(self, tolerance: int) -> bool:
        diff = self.difference
        return self.error is None and diff is not None and abs(diff) <= tolerance

    def as_json(self, tolerance: int) -> dict[str, Any]:
        return {"case": self.name, "predicted": self.predicted, "reported": self.reported,
                "difference": self.difference, "passed": self.passed(tolerance),
                "error": self.error, "note": self.note, "cost_usd": round(self.cost_usd, 8)}


def sample_image() -> str:
    """A PNG data URL of ``IMAGE_SIZE`` with a little drawn on it (a real page is not needed:
    only its size decides its tokens). One bit per pixel keeps it a few kilobytes."""
    from PIL import Image, ImageDraw

    image = Image.new("1", IMAGE_SIZE, 1)
    draw = ImageDraw.Draw(image)
    for i in range(12):
        draw.rectangle((100, 150 + i * 180, 1700, 200 + i * 180), fill=0)
    out = io.BytesIO()
    image.save(out, "PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def build_body(settings: Settings, profile: ModelProfile, content: Any, mode: str | None,
               max_tokens: int = ANSWER_TOKENS) -> dict[str, Any]:
    """A request as the workers build it: system prompt first, pages last, the strict format."""
    body: dict[str, Any] = {
        "model": settings.resolved_model_id,
        "messages": [{"role": "system", "content": system_text(None)},
                     {"role": "user", "content": content}],
        "max_completion_tokens": min(max_tokens, profile.max_output_tokens),
    }
    if mode is not None:
        body.update(format_fields(check_schema(SAMPLE_SCHEMA), mode))
    return fit_request(profile, body)


def cases(settings: Settings, profile: ModelProfile) -> list[tuple[str, dict[str, Any]]]:
    page = [{"type": "text", "text": page_header(1, 1) + SAMPLE_TEXT}]
    image = sample_image()
    out = [("text", build_body(settings, profile, page, None))]
    for detail in DETAILS:
        content = [{"type": "text", "text": page_header(1, 1, None, True)},
                   {"type": "image_url", "image_url": {"url": image, "detail": detail}}]
        out.append((f"image ({detail})", build_body(settings, profile, content, None)))
    out.append(("tools", build_body(settings, profile, page, "tools")))
    out.append(("json_schema", build_body(settings, profile, page, "json_schema")))
    return out


def run_case(client: ModelClient, profile: ModelProfile, name: str,
             body: dict[str, Any]) -> CaseResult:
    predicted = count_request(body, profile)
    result = CaseResult(name, predicted)
    try:
        call = client.complete(body, prompt_tokens=predicted)
    except ModelCallFailed as exc:
        result.error = f"{exc.code}: {exc.message}"[:300]
        return result
    result.reported = call.prompt_tokens
    result.cost_usd = profile.cost_usd(call.prompt_tokens, call.cached_tokens,
                                       call.completion_tokens)
    if call.reasoning_tokens:
        result.note = f"{call.reasoning_tokens} reasoning tokens"
    return result


def run_cases(settings: Settings, profile: ModelProfile,
              on_result: Callable[[CaseResult], None] | None = None) -> list[CaseResult]:
    client = ModelClient(settings, profile=profile)
    results = []
    for name, body in cases(settings, profile):
        result = run_case(client, profile, name, body)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


@dataclass
class WindowProbe:
    """Two requests at the profile's window: ``fits`` (prompt + answer cap = window) must be
    answered, ``over`` (one token more) refused with ``context_length_exceeded``."""

    fits: dict[str, Any]
    over: dict[str, Any]
    prompt_tokens: int
    cost_usd: float  # of ``fits``, and of ``over`` should the endpoint answer it


def _filled(settings: Settings, profile: ModelProfile, words: int, answer: int) -> dict[str, Any]:
    return build_body(settings, profile, "x" + " x" * words, None, answer)


def window_probe(settings: Settings, profile: ModelProfile, answer: int = 16) -> WindowProbe:
    """Fills the user message with " x" (one token each in o200k_base) until the request is
    exactly ``window - answer`` prompt tokens by the service's counter."""
    target = profile.context_window - answer
    words = max(0, target - count_request(_filled(settings, profile, 0, answer), profile))
    for _ in range(8):  # the count is linear in the words: one or two rounds
        prompt = count_request(_filled(settings, profile, words, answer), profile)
        if prompt == target:
            break
        words += target - prompt
    fits = _filled(settings, profile, words, answer)
    over = _filled(settings, profile, words + 1, answer)
    cost = profile.cost_usd(target, 0, answer) + profile.cost_usd(target + 1, 0, answer)
    return WindowProbe(fits, over, target, cost)


def run_window_probe(settings: Settings, profile: ModelProfile, probe: WindowProbe) -> list[CaseResult]:
    client = ModelClient(settings, profile=profile)
    fits = run_case(client, profile, "window (fits)", probe.fits)
    if fits.error and "tokens_per_minute" in fits.error:
        fits.note = "the account's tokens-per-minute limit is below the window"
    over = CaseResult("window (+1 token)", count_request(probe.over, profile))
    try:
        call = client.complete(probe.over, prompt_tokens=over.predicted or 0)
        over.reported = call.prompt_tokens
        over.cost_usd = profile.cost_usd(call.prompt_tokens, call.cached_tokens,
                                               call.completion_tokens)
        over.error = ("answered: the endpoint's window is larger than the profile's "
                      f"{profile.context_window:,}")
    except RequestTooLarge as exc:
        if exc.reason == "context_length_exceeded":
            over.reported = over.predicted
            over.note = "refused with context_length_exceeded, as it should be"
        else:
            over.error = f"refused for another reason ({exc.reason}): {exc.message}"[:300]
    except ModelCallFailed as exc:
        over.error = f"{exc.code}: {exc.message}"[:300]
    return [fits, over]
