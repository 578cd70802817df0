"""The start-up check of the API and the model workers: read the endpoint's models once, say
clearly where it disagrees with the profile, refuse a retired model.

Bounded by ``LONGDOC_MODEL_CHECK_TIMEOUT_S`` (3 s): a slow or absent endpoint costs a warning,
never a start. Refused: a model whose shutdown date has passed, as the endpoint reports it or,
on OpenAI's own API, as the profile records it — unless ``LONGDOC_ALLOW_RETIRED_MODEL=1``.
"""

from __future__ import annotations

from datetime import date

from service.checks.endpoint import model_report
from service.core.logs import log
from service.core.models_check import Level, ModelReport
from service.core.profiles import ModelProfile
from service.core.settings import Settings


class RetiredModel(SystemExit):
    """Ends the process with the reason: uvicorn and Celery both stop on it and print it."""


def check_model_at_start(settings: Settings, profile: ModelProfile, component: str,
                         today: date | None = None) -> ModelReport | None:
    if settings.model_check_timeout_s <= 0:
        return None
    if not settings.resolved_api_key and not settings.model_base_url:
        # No endpoint configured: nothing is called (``longdoc run`` starts the sandbox then).
        log.info("model.check.skipped", component=component, reason="no model endpoint configured")
        return None
    report, _ = model_report(settings, profile, settings.model_check_timeout_s, today)
    for finding in report.findings:
        event = f"model.check.{finding.code}"
        if finding.level in (Level.WARNING, Level.ERROR):
            log.warning(event, component=component, model=report.model_id, message=finding.message)
        else:
            log.info(event, component=component, model=report.model_id, message=finding.message)
    if report.retired:
        reasons = "; ".join(f.message for f in report.findings if f.code == "shutdown_passed")
        if settings.allow_retired_model:
            log.warning("model.check.retired_allowed", component=component,
                        model=report.model_id, message=reasons)
        else:
            raise RetiredModel(
                f"longdoc {component}: refusing to start: {reasons}. Choose another model "
                "(LONGDOC_MODEL, e.g. gpt-6-luna) or endpoint, or set "
                "LONGDOC_ALLOW_RETIRED_MODEL=1 to start anyway.")
    return report
