"""Model profiles as data: window, output cap, tokenizer, image rules, prices, rate-limit tiers."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from service.core.tokens import image_patch_tokens, image_tile_tokens


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
    image_multiplier: float = 1.0
    image_max_patches: int = 1536
    image_base_tokens: int = 85
    image_tile_tokens: int = 170
    image_low_tokens: int = 85
    message_overhead: int = 3
    reply_overhead: int = 3
    tiers: dict[str, RateTier] = field(default_factory=dict, hash=False, compare=False)

    def image_tokens(self, width: int, height: int, detail: str = "auto") -> int:
        if self.image_method == "patch":
            full = image_patch_tokens(width, height, self.image_multiplier, self.image_max_patches)
            # "low" is undocumented for patch models: a configured ceiling, never above "high".
            return min(full, self.image_low_tokens) if detail == "low" else full
        if detail == "low":
            return self.image_low_tokens
        return image_tile_tokens(width, height, self.image_base_tokens, self.image_tile_tokens)

    def cost_usd(self, prompt: int, cached: int, completion: int) -> float:
        uncached = max(prompt - cached, 0)
        return (
            uncached * self.price_input
            + cached * self.price_cached_input
            + completion * self.price_output
        ) / 1_000_000


def _parse(doc: dict[str, Any]) -> dict[str, ModelProfile]:
    profiles = {}
    for name, raw in doc.get("profiles", {}).items():
        raw = dict(raw)
        tiers = {k: RateTier(**v) for k, v in raw.pop("tiers", {}).items()}
        profiles[name] = ModelProfile(name=name, tiers=tiers, **raw)
    return profiles


def load_profiles(extra_file: str | Path | None = None) -> dict[str, ModelProfile]:
    text = resources.files("service.core").joinpath("model_profiles.toml").read_text()
    shipped = tomllib.loads(text)
    if extra_file:
        extra = tomllib.loads(Path(extra_file).read_text())
        for name, raw in extra.get("profiles", {}).items():
            base = shipped.setdefault("profiles", {}).get(name, {})
            shipped["profiles"][name] = {**base, **raw}
    return _parse(shipped)


def get_profile(name: str, extra_file: str | Path | None = None) -> ModelProfile:
    profiles = load_profiles(extra_file)
    try:
        return profiles[name]
    except KeyError:
        raise KeyError(f"no model profile named {name!r}; known: {sorted(profiles)}") from None
