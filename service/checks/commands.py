"""``longdoc models`` and ``longdoc check``: what the endpoint serves beside the profiles, and
the live comparison of the service's token counts with the endpoint's."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from typing import Any

from rich.console import Console
from rich.table import Table

from service.checks.endpoint import EndpointUnreadable, fetch_models, model_report
from service.core.models_check import Level, ModelReport, ServedModel, compare
from service.core.profiles import ModelProfile, get_profile, load_profiles
from service.core.settings import Settings, get_settings

STYLE = {Level.OK: "green", Level.NOTE: "cyan", Level.WARNING: "yellow", Level.ERROR: "bold red"}


def _profile(settings: Settings) -> ModelProfile:
    return get_profile(settings.model, settings.model_profiles_file or None)


def _no_endpoint(settings: Settings) -> bool:
    """Without a key or a base URL there is nothing to check (``longdoc run`` would start the
    sandbox): said plainly instead of a 401 from OpenAI per case."""
    if settings.resolved_api_key or settings.model_base_url:
        return False
    print("no model endpoint is configured: set LONGDOC_MODEL_API_KEY (or OPPER_API_KEY, "
          "OPENAI_API_KEY) and, for another endpoint, LONGDOC_MODEL_BASE_URL or "
          "LONGDOC_MODEL_PRESET", file=sys.stderr)
    return True


def _print_findings(console: Console, report: ModelReport) -> None:
    for finding in report.findings:
        console.print(f"  [{STYLE[finding.level]}]{finding.level.value:>7}[/] {finding.message}",
                      highlight=False)


def _date(value: date | None) -> str:
    return value.isoformat() if value else "—"


def cmd_models(args: argparse.Namespace) -> int:
    """What the endpoint serves (``GET /v1/models``) beside the shipped and configured profiles,
    and the comparison for the configured model."""
    settings = get_settings()
    if _no_endpoint(settings):
        return 2
    profiles = load_profiles(settings.model_profiles_file or None)
    profile = profiles.get(settings.model) or _profile(settings)
    try:
        models: list[ServedModel] | None = fetch_models(settings, args.timeout)
        why = None
    except EndpointUnreadable as exc:
        models, why = None, str(exc)
    report = compare(profile, settings.resolved_model_id, settings.resolved_base_url, models,
                     date.today(), why)
    if args.json:
        print(json.dumps({"endpoint": settings.resolved_base_url, "models": None if models is None
                          else [_model_json(m, profiles) for m in models],
                          "report": report.as_json()}, indent=2))
        return 0 if models is not None else 1
    console = Console()
    if models is not None:
        table = Table(title=f"models served by {settings.resolved_base_url}")
        table.add_column("id", no_wrap=True)
        for column in ("context length", "shutdown", "profile", "profile window",
                       "profile shutdown (OpenAI)"):
            table.add_column(column)
        for model in models:
            matched = _matching_profile(model, profiles)
            window = "—"
            if matched is not None:
                window = f"{matched.context_window:,}"
                if model.context_length not in (None, matched.context_window):
                    window = f"[yellow]{window} ≠[/]"
            table.add_row(model.id, f"{model.context_length:,}" if model.context_length else "—",
                          _date(model.shutdown_date), matched.name if matched else "—", window,
                          _date(matched.shutdown_date) if matched else "—")
        console.print(table)
    console.print(f"configured: {settings.resolved_model_id} (profile {profile.name})")
    _print_findings(console, report)
    return 0 if models is not None else 1


def _matching_profile(model: ServedModel, profiles: dict[str, ModelProfile]) -> ModelProfile | None:
    return profiles.get(model.id) or profiles.get(model.id.rsplit("/", 1)[-1])


def _model_json(model: ServedModel, profiles: dict[str, ModelProfile]) -> dict[str, Any]:
    matched = _matching_profile(model, profiles)
    return {"id": model.id, "owned_by": model.owned_by, "context_length": model.context_length,
            "shutdown_date": _date(model.shutdown_date) if model.shutdown_date else None,
            "profile": matched.name if matched else None,
            "profile_context_window": matched.context_window if matched else None,
            "profile_shutdown_date": (matched.shutdown_date.isoformat()
                                      if matched and matched.shutdown_date else None)}


def cmd_check(args: argparse.Namespace) -> int:
    """The live check: exit 0 when every case is within ``--tolerance``, 1 on a mismatch or an
    error, 2 when ``--probe-window`` waits for ``--yes`` or no endpoint is configured."""
    from service.checks.live import run_cases, run_window_probe, window_probe

    settings = get_settings()
    if _no_endpoint(settings):
        return 2
    profile = _profile(settings)
    console = Console(stderr=args.json)
    tolerance = args.tolerance
    probe = None
    if args.probe_window:
        probe = window_probe(settings, profile)
        console.print(f"The window probe sends a request of {probe.prompt_tokens:,} prompt tokens "
                      f"(the {profile.name} profile's window less a 16-token answer) and one of "
                      f"{probe.prompt_tokens + 1:,}, which should be refused: about "
                      f"${probe.cost_usd:.4f} at the profile's prices.", highlight=False)
        if not args.yes:
            console.print("Nothing was sent. Run again with --yes to send them.")
            return 2
    console.print(f"checking {settings.resolved_model_id} at {settings.resolved_base_url} "
                  f"against the {profile.name} profile ({profile.status} figures)", highlight=False)
    report, _ = model_report(settings, profile, args.timeout)
    results = run_cases(settings, profile)
    if probe is not None:
        results += run_window_probe(settings, profile, probe)
    failed = [r for r in results if not r.passed(tolerance)]
    if args.json:
        print(json.dumps({"model": report.as_json(), "tolerance": tolerance,
                          "cases": [r.as_json(tolerance) for r in results],
                          "failed": [r.name for r in failed]}, indent=2))
    else:
        _print_check(console, report, results, tolerance)
    if failed:
        console.print(f"[bold red]FAILED[/]: {', '.join(r.name for r in failed)} "
                      f"(tolerance {tolerance} tokens)", highlight=False)
        return 1
    console.print(f"[green]passed[/]: {len(results)} cases within {tolerance} tokens; spent about "
                  f"${sum(r.cost_usd for r in results):.6f}", highlight=False)
    return 0


def _print_check(console: Console, report: ModelReport, results: list[Any], tolerance: int) -> None:
    console.print("model:")
    _print_findings(console, report)
    table = Table(title="prompt tokens: predicted by the service, reported by the endpoint")
    table.add_column("case")
    for column in ("predicted", "reported", "difference"):
        table.add_column(column, justify="right")
    table.add_column("result")
    for r in results:
        diff = r.difference
        result = ("[green]ok[/]" if r.passed(tolerance) else
                  f"[red]error[/] {r.error}" if r.error else "[red]MISMATCH[/]")
        if r.note:
            result += f" ({r.note})"
        table.add_row(r.name, str(r.predicted if r.predicted is not None else "—"),
                      str(r.reported if r.reported is not None else "—"),
                      f"{diff:+d}" if diff is not None else "—", result)
    console.print(table)


def add_commands(sub: Any) -> None:
    """``longdoc models`` and ``longdoc check`` on the service's command line."""
    models = sub.add_parser("models", help="what the model endpoint serves (GET /v1/models) "
                            "beside the model profiles")
    models.add_argument("--json", action="store_true", help="print JSON")
    models.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (10)")
    models.set_defaults(func=cmd_models)
    check = sub.add_parser(
        "check", help="live check of the model endpoint: predicted against reported prompt "
        "tokens for text, images, tools and json_schema (costs a fraction of a cent)")
    check.add_argument("--tolerance", type=int, default=0,
                       help="tokens a case may differ by before the check fails (0)")
    check.add_argument("--probe-window", action="store_true",
                       help="also fill the profile's whole window and send one token more "
                       "(costs money: says how much and needs --yes)")
    check.add_argument("--yes", action="store_true", help="send the window probe")
    check.add_argument("--json", action="store_true", help="print the results as JSON")
    check.add_argument("--timeout", type=float, default=10.0,
                       help="seconds to wait for GET /v1/models (10)")
    check.set_defaults(func=cmd_check)

