"""What an endpoint's ``GET /v1/models`` says about the configured model, against its profile.

Pure functions: ``service/checks/`` fetches the list, the API and the model workers act on the
report at start (``startup.py``), ``longdoc models`` prints it.

Shapes (research notes model-truth §5): OpenAI lists ``id, object, created, owned_by`` and,
since 2026-08, ``shutdown_date`` ("YYYY-MM-DD" or null); OpenRouter and Opper's compat endpoint
add ``context_length``; OpenRouter's SDK also shows ``expiration_date``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from service.core.profiles import ModelProfile

# OpenAI's own API: where the profile's shutdown date (OpenAI's deprecations page) applies even
# when the endpoint does not say it. Gateways may route a model past that date.
OPENAI_HOSTS = ("api.openai.com",)


class Level(StrEnum):
    OK = "ok"
    NOTE = "note"
    WARNING = "warning"
    ERROR = "error"  # the service refuses to start (unless told otherwise)


@dataclass(frozen=True)
class ServedModel:
    """One entry of ``GET /v1/models``, with what the gateways add when they add it."""

    id: str
    owned_by: str | None = None
    context_length: int | None = None
    shutdown_date: date | None = None


@dataclass(frozen=True)
class Finding:
    level: Level
    code: str  # a stable name: listed, not_listed, context_mismatch, shutdown_passed, ...
    message: str


@dataclass
class ModelReport:
    model_id: str
    profile: str
    endpoint: str
    served: ServedModel | None = None  # the configured model's entry, when listed
    listed: bool | None = None  # None: the list could not be read
    findings: list[Finding] = field(default_factory=list)

    @property
    def retired(self) -> bool:
        return any(f.code == "shutdown_passed" for f in self.findings)

    def as_json(self) -> dict[str, Any]:
        served = self.served
        return {
            "model": self.model_id, "profile": self.profile, "endpoint": self.endpoint,
            "listed": self.listed, "retired": self.retired,
            "served": None if served is None else {
                "id": served.id, "owned_by": served.owned_by,
                "context_length": served.context_length,
                "shutdown_date": served.shutdown_date.isoformat() if served.shutdown_date else None},
            "findings": [{"level": f.level.value, "code": f.code, "message": f.message}
                         for f in self.findings],
        }


def _date(value: Any) -> date | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def parse_models(payload: Any) -> list[ServedModel]:
    """The entries of a ``GET /v1/models`` answer; anything unreadable in one is left out."""
    data = payload.get("data") if isinstance(payload, dict) else None
    models = []
    for entry in data if isinstance(data, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            continue
        top = entry.get("top_provider")
        models.append(ServedModel(
            id=entry["id"], owned_by=entry.get("owned_by") if isinstance(
                entry.get("owned_by"), str) else None,
            context_length=_int(entry.get("context_length")) or (
                _int(top.get("context_length")) if isinstance(top, dict) else None),
            shutdown_date=_date(entry.get("shutdown_date")) or _date(entry.get("expiration_date")),
        ))
    return models


def find_model(models: Sequence[ServedModel], model_id: str) -> ServedModel | None:
    """The entry for ``model_id``: exact, else the same name with or without a provider prefix
    (``openai/gpt-4.1-nano`` on Opper is ``gpt-4.1-nano`` elsewhere)."""
    for model in models:
        if model.id == model_id:
            return model
    bare = model_id.rsplit("/", 1)[-1]
    for model in models:
        if model.id.rsplit("/", 1)[-1] == bare:
            return model
    return None


def is_openai(base_url: str) -> bool:
    return (urlsplit(base_url).hostname or "") in OPENAI_HOSTS


def compare(profile: ModelProfile, model_id: str, base_url: str,
            models: Sequence[ServedModel] | None, today: date,
            unreadable: str | None = None) -> ModelReport:
    """The report on ``model_id`` at ``base_url``: ``models`` is the endpoint's list, or None
    when it could not be read (``unreadable`` says why)."""
    report = ModelReport(model_id=model_id, profile=profile.name, endpoint=base_url)
    add = report.findings.append
    if profile.status != "published":
        add(Finding(Level.NOTE, "reported_figures",
                    f"the {profile.name} profile's figures are reported, not all published by "
                    f"the vendor ({', '.join(profile.sources) or 'see model_profiles.toml'})"))
    if models is None:
        add(Finding(Level.WARNING, "models_unreadable",
                    f"could not read {base_url}/models ({unreadable or 'no answer'}): nothing "
                    "to compare the profile with"))
    else:
        report.served = find_model(models, model_id)
        report.listed = report.served is not None
        if report.served is None:
            add(Finding(Level.WARNING, "not_listed",
                        f"the endpoint does not list {model_id!r} among its {len(models)} models: "
                        "calls may fail with model_not_found"))
        else:
            add(Finding(Level.OK, "listed", f"the endpoint lists {report.served.id!r}"))
    served = report.served
    if served is not None and served.context_length is not None:
        if served.context_length == profile.context_window:
            add(Finding(Level.OK, "context_matches",
                        f"context length {served.context_length:,} as in the profile"))
        else:
            smaller = served.context_length < profile.context_window
            add(Finding(Level.WARNING, "context_mismatch",
                        f"the endpoint reports a context length of {served.context_length:,} "
                        f"tokens, the {profile.name} profile says {profile.context_window:,}: "
                        "plans use the profile's"
                        + (" and calls near the window will be refused" if smaller else "")
                        + " (set context_window in LONGDOC_MODEL_PROFILES_FILE if the endpoint "
                        "is right)"))
    reported = served.shutdown_date if served is not None else None
    official = is_openai(base_url)
    if reported is not None:
        if today >= reported:
            add(Finding(Level.ERROR, "shutdown_passed",
                        f"the endpoint reports {model_id!r} shut down on {reported.isoformat()}"))
        else:
            add(Finding(Level.WARNING, "shutdown_announced",
                        f"the endpoint reports {model_id!r} will shut down on "
                        f"{reported.isoformat()} ({(reported - today).days} days from now)"))
    profile_date = profile.shutdown_date
    if profile_date is not None and reported is None:
        if profile.is_retired(today) and official:
            add(Finding(Level.ERROR, "shutdown_passed",
                        f"OpenAI shut {profile.name} down on its own API on "
                        f"{profile_date.isoformat()} (profile shutdown_date)"))
        elif profile.is_retired(today):
            add(Finding(Level.NOTE, "shutdown_elsewhere",
                        f"OpenAI shut {profile.name} down on its own API on "
                        f"{profile_date.isoformat()}; this endpoint "
                        + ("still lists it" if report.listed else "may still route it")
                        + " and reports no shutdown date"))
        else:
            add(Finding(Level.WARNING, "shutdown_announced",
                        f"OpenAI will shut {profile.name} down on its own API on "
                        f"{profile_date.isoformat()} ({(profile_date - today).days} days from now)"))
    return report
