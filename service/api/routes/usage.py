"""``GET /v1/usage``: the tenant's use against its limits (``service.store.quotas``)."""

from __future__ import annotations

from fastapi import APIRouter

from schemas.api import UsageOut
from service.api.deps import CurrentTenant, SessionDep
from service.api.routes.common import error_responses
from service.store.quotas import usage_view

router = APIRouter(prefix="/v1/usage", tags=["usage"], responses=error_responses(_401="unauthorized"))


@router.get("", response_model=UsageOut)
def get_usage(tenant: CurrentTenant, session: SessionDep) -> UsageOut:
    """Jobs queued or running, pages and tokens this UTC day, dollars this UTC month, each with
    its limit (null: none) and when its window starts again. Running jobs count with what they
    have used so far; a job's pages count from when it is planned."""
    return usage_view(session, tenant)
