"""Model profiles as data: window, output cap, tokenizer, image rules, prices and their tiers,
reasoning, the parameters a model takes, its shutdown date, rate-limit tiers.

Everything here is a pure function of a profile: the planner, the cost account, the request
builder and ``longdoc check`` read the same figures.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, fields
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any

from service.core.tokens import image_tile_tokens, patch_scale

# Keys of a profiles file that only the sandbox reads (docs/sandbox.md): one file configures
# both sides, so the service skips them instead of refusing the file.
SANDBOX_ONLY_KEYS = frozenset({"created", "owned_by", "name_overhead", "reasoning_ratio"})
# Sampling parameters a reasoning model refuses unless its effort is "none" (OpenAI's GPT-5.2
# and 5.4 guides, research notes model-truth §6): longdoc never sends them to one.
SAMPLING_PARAMETERS = ("temperature", "top_p")


class ProfileError(ValueError):
    """A profiles file the service cannot use; the message names the file, model and key."""


@dataclass(frozen=True)
class RateTier:
    rpm: int
    tpm: int

    @property
    def enabled(self) -> bool:
        return self.rpm > 0 or self.tpm > 0


@dataclass(frozen=True)
class ModelProfile:
    name: str
    context_window: int
    max_output_tokens: int
    tokenizer: str
    image_method: str
    price_input: float
    price_cached_input: float
    price_output: float
    batch_discount: float = 0.5
    # Long-context pricing: a prompt of more than ``long_context_threshold`` tokens bills the
    # *whole request* at these multiples (input and cached input, output). 0 = no such tier.
    long_context_threshold: int = 0
    long_context_input_multiplier: float = 1.0
    long_context_output_multiplier: float = 1.0
    image_multiplier: float = 1.0
    image_max_patches: int = 1536
    image_max_dimension: int = 0  # patch models that first fit the image in N x N pixels
    image_base_tokens: int = 85
    image_tile_tokens: int = 170
    image_low_tokens: int = 85
    message_overhead: int = 3
    reply_overhead: int = 3
    # Reasoning models: no temperature, an effort instead; reasoning tokens count inside
    # ``max_completion_tokens`` and are reported in ``completion_tokens_details``.
    reasoning: bool = False
    reasoning_efforts: tuple[str, ...] = ()
    default_reasoning_effort: str = ""  # what the endpoint uses when none is sent
    reasoning_effort: str = ""  # what longdoc asks for ("" = the endpoint's default)
    # Reasoning tokens per answer token at ``reasoning_effort``: unpublished, an estimate for
    # cost estimates only (a call records what the endpoint reports).
    reasoning_output_ratio: float = 0.0
    function_tools_need_effort_none: bool = False
    unsupported_parameters: tuple[str, ...] = ()
    max_images: int = 500
    max_image_payload_bytes: int = 50_000_000  # counted as sent: base64 data URLs
    # The day OpenAI's own API stops serving the model (its deprecations page); gateways may
    # route it longer, and an endpoint's ``GET /v1/models`` says for itself.
    shutdown_date: date | None = None
    status: str = "published"  # or "reported": figures not all on the vendor's own page
    sources: tuple[str, ...] = ()
    tiers: dict[str, RateTier] = field(default_factory=dict, hash=False, compare=False)

    def image_tokens(self, width: int, height: int, detail: str = "auto") -> int:
        if self.image_method == "patch":
            full = patch_image_tokens(width, height, self.image_multiplier,
                                      self.image_max_patches, self.image_max_dimension)
            # "low" is undocumented for patch models: a configured ceiling, never above "high".
            return min(full, self.image_low_tokens) if detail == "low" else full
        if detail == "low":
            return self.image_low_tokens
        return image_tile_tokens(width, height, self.image_base_tokens, self.image_tile_tokens)

    def price_multipliers(self, prompt: int) -> tuple[float, float]:
        """(input, output) multipliers of a call whose prompt has ``prompt`` tokens: "Prompts
        with >272K input tokens are priced at 2x input and 1.5x output for the full request"
        (GPT-5.6 and GPT-6 Luna model pages; cache reads at 2x as well on GPT-6 Luna's)."""
        if self.long_context_threshold and prompt > self.long_context_threshold:
            return self.long_context_input_multiplier, self.long_context_output_multiplier
        return 1.0, 1.0

    def cost_usd(self, prompt: int, cached: int, completion: int) -> float:
        """The price of one call: ``prompt`` is the call's whole prompt (cached included),
        which decides its price tier."""
        in_x, out_x = self.price_multipliers(prompt)
        uncached = max(prompt - cached, 0)
        return (
            uncached * self.price_input * in_x
            + cached * self.price_cached_input * in_x
            + completion * self.price_output * out_x
        ) / 1_000_000

    def is_retired(self, today: date) -> bool:
        """Whether OpenAI's own API has stopped serving the model by ``today``."""
        return self.shutdown_date is not None and today >= self.shutdown_date


def patch_image_tokens(width: float, height: float, multiplier: float, max_patches: int,
                       max_dimension: int = 0) -> int:
    """The patch method (OpenAI vision guide): fit in ``max_dimension`` where the model has one,
    32-pixel patches, shrunk to the patch budget, times the model's multiplier, rounded up.

    The product is rounded to 6 places before rounding up: 150 patches x 1.62 is 243.00000000000003
    in binary floating point, and the guide's "round up" means 243, not 244.
    """
    w, h = float(width), float(height)
    if max_dimension and max(w, h) > max_dimension:
        scale = max_dimension / max(w, h)
        w, h = w * scale, h * scale
    r = patch_scale(w, h, 32, max_patches)
    patches = math.ceil(w * r / 32) * math.ceil(h * r / 32)
    return math.ceil(round(patches * multiplier, 6))


def wire_image_bytes(raw_bytes: int, media_type: str = "image/jpeg") -> int:
    """What an image adds to a request's payload as sent: a base64 data URL, 4 characters per 3
    bytes plus its ``data:<type>;base64,`` prefix. The API's image payload limit counts the
    request ("Total image size is 50.56MB, which exceeds the allowed limit of 50MB", measured by
    a third party, 2026-09), so a cap on raw bytes lets a third more through."""
    return len(f"data:{media_type};base64,") + 4 * math.ceil(raw_bytes / 3)


def request_options(profile: ModelProfile, mode: str) -> dict[str, Any]:
    """What a request body must carry for this model besides messages and format.

    - Models without reasoning get ``temperature: 0`` (extraction wants the likeliest answer).
    - Reasoning models get no temperature (refused unless the effort is "none") and
      ``reasoning_effort``: the profile's, or "none" with function tools where the model takes
      tools only without reasoning (GPT-6 Luna's page, for Chat Completions).
    - Strict function tools get ``parallel_tool_calls: false``: "Structured Outputs is not
      compatible with parallel function calls. [...] Set parallel_tool_calls: false" (OpenAI,
      "Introducing Structured Outputs in the API", limitations).
    Parameters the profile lists as unsupported are never sent.
    """
    options: dict[str, Any] = {}
    if profile.reasoning:
        effort = profile.reasoning_effort
        if mode == "tools" and profile.function_tools_need_effort_none:
            effort = "none"
        if effort:
            options["reasoning_effort"] = effort
    else:
        options["temperature"] = 0
    if mode == "tools":
        options["parallel_tool_calls"] = False
    return {k: v for k, v in options.items() if k not in profile.unsupported_parameters}


def fit_request(profile: ModelProfile, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` as this model takes it: parameters it does not support removed (sampling ones
    for a reasoning model), and ``request_options`` added where the body has none. What the body
    sets itself wins, so a request builder that already merged ``request_options`` is kept."""
    mode = "tools" if body.get("tools") else "json_schema"
    dropped = set(profile.unsupported_parameters)
    if profile.reasoning:
        dropped.update(SAMPLING_PARAMETERS)
    fitted = {k: v for k, v in body.items() if k not in dropped}
    for key, value in request_options(profile, mode).items():
        fitted.setdefault(key, value)
    if profile.reasoning and mode == "tools" and profile.function_tools_need_effort_none:
        fitted["reasoning_effort"] = "none"  # any other effort is refused with function tools
    return fitted


def cheapest_budget(profile: ModelProfile, *, budget: int, overhead: int, page_tokens: int,
                    output_per_call: int, margin: int = 0) -> int:
    """The page budget per call that minimises the estimated cost of ``page_tokens`` of pages.

    Without price tiers that is the whole ``budget`` (fewest calls: the instructions, schema and
    answer are paid once per call). With one, calls kept ``margin`` tokens under its threshold
    can cost less than fewer calls above it (2x input on GPT-6 Luna), though each pays the
    overhead and an answer again. Each candidate is costed as evenly balanced calls.
    """
    candidates = {budget}
    if profile.long_context_threshold:
        under = profile.long_context_threshold - overhead - margin
        if 0 < under < budget:
            candidates.add(under)

    def cost(cap: int) -> float:
        calls = max(1, math.ceil(page_tokens / cap))
        prompt = overhead + math.ceil(page_tokens / calls)
        return calls * profile.cost_usd(prompt, 0, output_per_call)

    return min(candidates, key=lambda cap: (cost(cap), -cap))


_FIELDS = {f.name: f for f in fields(ModelProfile)}
_TUPLES = {"reasoning_efforts", "unsupported_parameters", "sources"}


def _value(where: str, key: str, value: Any) -> Any:
    if key in _TUPLES:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ProfileError(f"{where}.{key} must be a list of strings")
        return tuple(value)
    if key == "shutdown_date":
        if isinstance(value, date):
            return value
        try:
            return date.fromisoformat(str(value))
        except ValueError:
            raise ProfileError(f"{where}.shutdown_date must be a date (YYYY-MM-DD)") from None
    return value


def _parse(doc: dict[str, Any], source: str) -> dict[str, ModelProfile]:
    profiles = {}
    for name, raw in doc.get("profiles", {}).items():
        where = f"{source}: [profiles.{name!r}]"
        raw = {k: v for k, v in raw.items() if k not in SANDBOX_ONLY_KEYS}
        unknown = sorted(k for k in raw if k not in _FIELDS or k == "name")
        if unknown:
            raise ProfileError(f"{where}: unknown keys {unknown}")
        tiers = {k: RateTier(**v) for k, v in raw.pop("tiers", {}).items()}
        values = {k: _value(where, k, v) for k, v in raw.items()}
        try:
            profiles[name] = ModelProfile(name=name, tiers=tiers, **values)
        except TypeError as exc:
            raise ProfileError(f"{where}: {exc}") from None
    return profiles


def load_profiles(extra_file: str | Path | None = None) -> dict[str, ModelProfile]:
    text = resources.files("service.core").joinpath("model_profiles.toml").read_text()
    shipped = tomllib.loads(text)
    if extra_file:
        extra = tomllib.loads(Path(extra_file).read_text())
        # ``[models."id"]`` is the sandbox's spelling of the same tables (docs/sandbox.md).
        for table in ("models", "profiles"):
            for name, raw in (extra.get(table) or {}).items():
                base = shipped.setdefault("profiles", {}).get(name, {})
                shipped["profiles"][name] = {**base, **raw}
    return _parse(shipped, str(extra_file or "model_profiles.toml"))


def get_profile(name: str, extra_file: str | Path | None = None) -> ModelProfile:
    profiles = load_profiles(extra_file)
    try:
        return profiles[name]
    except KeyError:
        raise KeyError(f"no model profile named {name!r}; known: {sorted(profiles)}") from None
