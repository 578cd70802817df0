"""The models the sandbox can play: its own table (``models.toml``) and the published rules that
turn an image into tokens and a call into dollars."""

from __future__ import annotations

import math
import sys
import tomllib
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

# The sandbox's own guess where nothing is published; docs/sandbox.md, "unknown formulas".
DEFAULT_REASONING_RATIO = {"none": 0.0, "minimal": 0.25, "low": 0.5, "medium": 1.0, "high": 2.0,
                           "xhigh": 3.0, "max": 4.0}
# Keys of the service's profile format that mean nothing to the sandbox: skipped quietly.
SERVICE_ONLY_KEYS = {"tokenizer", "tiers", "batch_discount", "image_low_tokens"}


class ModelTableError(ValueError):
    """A model table or profiles file the sandbox cannot use; the message says where."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    context_window: int
    max_output_tokens: int
    price_input: float
    price_cached_input: float
    price_output: float
    image_method: str
    status: str = "published"
    sources: tuple[str, ...] = ()
    created: int = 0
    owned_by: str = "system"
    shutdown_date: str | None = None
    long_context_threshold: int = 0
    long_context_input_multiplier: float = 1.0
    long_context_output_multiplier: float = 1.0
    image_multiplier: float = 1.0
    image_max_patches: int = 1536
    image_max_dimension: int = 0
    image_base_tokens: int = 85
    image_tile_tokens: int = 170
    message_overhead: int = 3
    name_overhead: int = 1
    reply_overhead: int = 3
    reasoning: bool = False
    reasoning_efforts: tuple[str, ...] = ()
    default_reasoning_effort: str = "none"
    function_tools_need_effort_none: bool = False
    unsupported_parameters: tuple[str, ...] = ()
    max_images: int = 500
    max_image_payload_bytes: int = 50_000_000
    reasoning_ratio: dict[str, float] = field(
        default_factory=lambda: dict(DEFAULT_REASONING_RATIO), hash=False, compare=False)

    def image_tokens(self, width: int, height: int, detail: str) -> int:
        if self.image_method == "tile":
            return tile_tokens(width, height, detail, self.image_base_tokens, self.image_tile_tokens)
        return patch_tokens(width, height, detail, self.image_multiplier, self.image_max_patches,
                            self.image_max_dimension)

    def cost_usd(self, prompt: int, cached: int, completion: int) -> float:
        """The price of one call. Above ``long_context_threshold`` prompt tokens the whole
        request is billed at the long-context rates (GPT-5.x/6 model pages)."""
        long = bool(self.long_context_threshold) and prompt > self.long_context_threshold
        in_x = self.long_context_input_multiplier if long else 1.0
        out_x = self.long_context_output_multiplier if long else 1.0
        uncached = max(prompt - cached, 0)
        return (uncached * self.price_input * in_x + cached * self.price_cached_input * in_x
                + completion * self.price_output * out_x) / 1_000_000


def patch_count(width: float, height: float, max_patches: int, patch: int = 32) -> int:
    """Vision guide, patch method: A. patches covering the image; B. above the budget, shrink
    by r = sqrt(32²·budget / (w·h)), then r ·= min(floor(w·r/32)/(w·r/32), floor(h·r/32)/(h·r/32));
    C. count the patches of the resized image."""
    raw = math.ceil(width / patch) * math.ceil(height / patch)
    if raw <= max_patches:
        return raw
    r = math.sqrt(patch * patch * max_patches / (width * height))
    w, h = width * r / patch, height * r / patch
    r *= min(math.floor(w) / w, math.floor(h) / h)
    return math.ceil(width * r / patch) * math.ceil(height * r / patch)


def patch_tokens(width: int, height: int, detail: str, multiplier: float, max_patches: int,
                 max_dimension: int = 0) -> int:
    w, h = float(width), float(height)
    if max_dimension and max(w, h) > max_dimension:  # "a 2048-pixel maximum dimension" (version C)
        scale = max_dimension / max(w, h)
        w, h = w * scale, h * scale
    patches = patch_count(w, h, max_patches)
    if detail == "low":
        # Unpublished for patch models. The guide says detail "low" gives the model "a
        # low-resolution 512px x 512px version of the image": bill that square, never more
        # than the image itself.
        patches = min(patches, patch_count(512, 512, max_patches))
    # "Multiply the patch count by the model's multiplier and round up" (vision guide, version C).
    return math.ceil(round(patches * multiplier, 6))


def tile_tokens(width: int, height: int, detail: str, base: int, per_tile: int) -> int:
    """Vision guide, tile method: low is the base alone; otherwise fit in 2048², bring the
    shortest side down to 768 (never enlarging), and add a tile's tokens per 512-pixel square."""
    if detail == "low":
        return base
    scale = min(1.0, 2048 / max(width, height))
    w, h = width * scale, height * scale
    scale = min(1.0, 768 / min(w, h))
    w, h = w * scale, h * scale
    return base + per_tile * math.ceil(w / 512) * math.ceil(h / 512)


def _coerce(spec_name: str, key: str, value: Any, kind: Any, where: str) -> Any:
    origin = typing.get_origin(kind)
    if origin in (types.UnionType, typing.Union):
        if value is None:
            return None
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
        origin = typing.get_origin(kind)
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ModelTableError(f"{where}: {spec_name}.{key} must be a list of strings")
        return tuple(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ModelTableError(f"{where}: {spec_name}.{key} must be a table")
        return {str(k): float(v) for k, v in value.items()}
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is str and hasattr(value, "isoformat"):  # a TOML date: 2026-10-23
        return value.isoformat()
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ModelTableError(f"{where}: {spec_name}.{key} must be {kind.__name__}, "
                              f"not {type(value).__name__}")
    return value


_HINTS = typing.get_type_hints(ModelSpec)
_FIELDS = {f.name: f for f in fields(ModelSpec)}
_REQUIRED = [f.name for f in fields(ModelSpec)
             if f.default is MISSING and f.default_factory is MISSING and f.name != "name"]


def _entries(doc: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    entries: dict[str, dict[str, Any]] = {}
    for table in ("models", "profiles"):
        for name, raw in (doc.get(table) or {}).items():
            if not isinstance(raw, dict):
                raise ModelTableError(f"{where}: [{table}.{name!r}] must be a table")
            entries[name] = {**entries.get(name, {}), **raw}
    return entries


def _build(name: str, raw: dict[str, Any], where: str) -> ModelSpec:
    values: dict[str, Any] = {}
    ignored = []
    for key, value in raw.items():
        if key not in _FIELDS or key == "name":
            if key not in SERVICE_ONLY_KEYS:
                ignored.append(key)
            continue
        values[key] = _coerce(name, key, value, _HINTS[key], where)
    if ignored:
        print(f"longdoc sandbox: {where}: {name}: ignoring unknown keys {sorted(ignored)}",
              file=sys.stderr)
    missing = [k for k in _REQUIRED if k not in values]
    if missing:
        raise ModelTableError(f"{where}: model {name!r} lacks {', '.join(missing)}")
    if values["image_method"] not in ("patch", "tile"):
        raise ModelTableError(f"{where}: {name}.image_method must be 'patch' or 'tile'")
    spec = ModelSpec(name=name, **values)
    if spec.reasoning and spec.default_reasoning_effort not in spec.reasoning_efforts:
        raise ModelTableError(f"{where}: {name}.default_reasoning_effort is not in reasoning_efforts")
    return spec


def load_models(profiles_file: str | Path | None = None) -> dict[str, ModelSpec]:
    """The shipped table, with the entries of ``profiles_file`` merged over it field by field."""
    shipped = tomllib.loads(resources.files("service.sandbox").joinpath("models.toml").read_text())
    raw = _entries(shipped, "models.toml")
    if profiles_file:
        path = Path(profiles_file)
        try:
            extra = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ModelTableError(f"{path}: {exc}") from None
        for name, entry in _entries(extra, str(path)).items():
            raw[name] = {**raw.get(name, {}), **entry}
    return {name: _build(name, entry, str(profiles_file or "models.toml"))
            for name, entry in raw.items()}


def get_model(name: str, profiles_file: str | Path | None = None) -> ModelSpec:
    models = load_models(profiles_file)
    if name not in models:
        raise ModelTableError(f"no model {name!r} in the sandbox's table; known: {sorted(models)}")
    return models[name]

