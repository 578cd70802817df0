"""Tenant quotas: concurrent jobs, pages and tokens per UTC day, US dollars per UTC month.

What a tenant has used is its ledger (``tenant_usage``: one row of numbers per UTC day, filled
as its jobs end) plus what its jobs not yet in the ledger have used so far. A job goes into the
ledger once it has ended and nothing of it is in flight (``service.store.retention``), on the
day that happens, so deleting a job gives nothing back, and a test (or an operator) can move
a day's row to see a window start again.

Limits are checked when a job is created (in the transaction that inserts it, after locking
the tenant's row, so two requests at once cannot both pass a limit of one) and, for a job whose
documents were still being ingested, again when it is planned: pages are known only then. A job
that has started runs to its end, so tokens and dollars can pass a limit by what the jobs in
flight spend; pages are exact (the plan says how many a job reads).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from schemas.api import JobStatus, QuotaUse, UsageOut
from schemas.errors import ErrorCode, LongdocError
from service.core.jobs import JobSpec, estimate_cost
from service.core.planner import Plan as ChunkPlan
from service.core.profiles import ModelProfile
from service.core.settings import Settings
from service.store.jobs import plan_pages
from service.store.models import Job, Tenant, TenantUsage, utcnow

UNFINISHED = (JobStatus.QUEUED, JobStatus.RUNNING)
# A slot frees when one of the tenant's jobs ends: there is no time to name, so a short wait.
CONCURRENCY_RETRY_S = 5


@dataclass(frozen=True)
class Demand:
    """What a job about to start will read: pages and prompt tokens from its plan, and its
    estimated cost (worked out before the write transaction, and only for a tenant with a
    dollar limit: the estimate counts the schema's tokens, which can take a while)."""

    pages: int = 0
    tokens: int = 0
    usd: float | None = None


@dataclass(frozen=True)
class Use:
    concurrent_jobs: int
    pages_today: int
    tokens_today: int
    usd_this_month: float


def day_start(now: datetime) -> datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def next_day(now: datetime) -> datetime:
    return day_start(now) + timedelta(days=1)


def next_month(now: datetime) -> datetime:
    first = day_start(now).replace(day=1)
    return first.replace(year=first.year + 1, month=1) if first.month == 12 \
        else first.replace(month=first.month + 1)


def _ledger(session: Session, tenant_id: str, since: date) -> tuple[int, int, float]:
    pages, tokens, usd = session.execute(
        select(func.coalesce(func.sum(TenantUsage.pages), 0),
               func.coalesce(func.sum(TenantUsage.prompt_tokens + TenantUsage.completion_tokens), 0),
               func.coalesce(func.sum(TenantUsage.cost_usd), 0.0))
        .where(TenantUsage.tenant_id == tenant_id, TenantUsage.day >= since)).one()
    return int(pages), int(tokens), float(usd)


def _not_charged(session: Session, tenant_id: str) -> tuple[int, int, float]:
    """What the tenant's jobs not in the ledger yet have used (those queued, running, or ended
    moments ago): the ``(charged_at, tenant_id)`` index finds them."""
    pages, tokens, usd = session.execute(
        select(func.coalesce(func.sum(Job.pages), 0),
               func.coalesce(func.sum(Job.prompt_tokens + Job.completion_tokens), 0),
               func.coalesce(func.sum(Job.cost_usd), 0.0))
        .where(Job.tenant_id == tenant_id, Job.charged_at.is_(None))).one()
    return int(pages or 0), int(tokens), float(usd)


def current_use(session: Session, tenant_id: str, now: datetime) -> Use:
    concurrent: int = session.scalar(select(func.count()).select_from(Job).where(
        Job.tenant_id == tenant_id, Job.status.in_(UNFINISHED))) or 0
    live = _not_charged(session, tenant_id)
    today = _ledger(session, tenant_id, now.date())
    month = _ledger(session, tenant_id, now.date().replace(day=1))
    return Use(concurrent_jobs=concurrent, pages_today=today[0] + live[0],
               tokens_today=today[1] + live[1], usd_this_month=month[2] + live[2])


def _seconds_until(moment: datetime, now: datetime) -> str:
    return str(max(1, math.ceil((moment - now).total_seconds())))


def _refuse(message: str, retry_after: str) -> LongdocError:
    return LongdocError(ErrorCode.QUOTA_EXCEEDED, f"quota exceeded: {message}",
                        {"Retry-After": retry_after})


def enforce(session: Session, tenant_id: str, demand: Demand | None, new_job: bool,
            now: datetime | None = None) -> None:
    """Refuses (429 ``quota_exceeded``, with ``Retry-After`` and the limit in the message) a job
    that would pass one of the tenant's limits. Call it inside the transaction that creates or
    starts the job: the tenant's row stays locked until it commits, so the next request counts
    this job."""
    now = now or utcnow()
    tenant = session.execute(select(Tenant).where(Tenant.id == tenant_id)
                             .with_for_update(key_share=True)).scalar_one()
    limits = (tenant.max_concurrent_jobs, tenant.max_pages_per_day, tenant.max_tokens_per_day,
              tenant.max_usd_per_month)
    if all(limit is None for limit in limits):
        return
    use = current_use(session, tenant_id, now)
    demand = demand or Demand()
    day_reset, month_reset = next_day(now), next_month(now)
    if new_job and tenant.max_concurrent_jobs is not None \
            and use.concurrent_jobs >= tenant.max_concurrent_jobs:
        raise _refuse(f"max_concurrent_jobs is {tenant.max_concurrent_jobs} "
                      f"({use.concurrent_jobs} queued or running); try again when one has ended",
                      str(CONCURRENCY_RETRY_S))
    if tenant.max_pages_per_day is not None and (
            use.pages_today >= tenant.max_pages_per_day
            or use.pages_today + demand.pages > tenant.max_pages_per_day):
        raise _refuse(f"max_pages_per_day is {tenant.max_pages_per_day} ({use.pages_today} used "
                      f"today, this job reads {demand.pages}); the UTC day ends at "
                      f"{day_reset.isoformat()}", _seconds_until(day_reset, now))
    if tenant.max_tokens_per_day is not None and (
            use.tokens_today >= tenant.max_tokens_per_day
            or use.tokens_today + demand.tokens > tenant.max_tokens_per_day):
        raise _refuse(f"max_tokens_per_day is {tenant.max_tokens_per_day} ({use.tokens_today} "
                      f"used today, this job's prompts are {demand.tokens}); the UTC day ends at "
                      f"{day_reset.isoformat()}", _seconds_until(day_reset, now))
    if tenant.max_usd_per_month is not None:
        estimate = demand.usd or 0.0
        if use.usd_this_month >= tenant.max_usd_per_month \
                or use.usd_this_month + estimate > tenant.max_usd_per_month:
            raise _refuse(f"max_usd_per_month is {tenant.max_usd_per_month:g} "
                          f"(${use.usd_this_month:.6f} used this month, this job is estimated at "
                          f"${estimate:.6f}); the UTC month ends at {month_reset.isoformat()}",
                          _seconds_until(month_reset, now))


def usage_view(session: Session, tenant: Tenant, now: datetime | None = None) -> UsageOut:
    now = now or utcnow()
    use = current_use(session, tenant.id, now)
    day_reset, month_reset = next_day(now), next_month(now)
    return UsageOut(
        tenant=tenant.name,
        concurrent_jobs=QuotaUse(used=use.concurrent_jobs, limit=tenant.max_concurrent_jobs,
                                 window="now", resets_at=None),
        pages_per_day=QuotaUse(used=use.pages_today, limit=tenant.max_pages_per_day,
                               window="utc_day", resets_at=day_reset),
        tokens_per_day=QuotaUse(used=use.tokens_today, limit=tenant.max_tokens_per_day,
                                window="utc_day", resets_at=day_reset),
        usd_per_month=QuotaUse(used=round(use.usd_this_month, 8), limit=tenant.max_usd_per_month,
                               window="utc_month", resets_at=month_reset))


def charge(session: Session, job: Job, now: datetime) -> None:
    """Adds an ended job's use to its tenant's ledger (today's row) and marks it charged: the
    quotas count it from the ledger from now on, whatever happens to the job."""
    _add_to_ledger(session, job.tenant_id, now, jobs=1, pages=job.pages or 0,
                   prompt_tokens=job.prompt_tokens or 0,
                   completion_tokens=job.completion_tokens or 0, cost_usd=job.cost_usd or 0.0)
    job.charged_at = now


def charge_late(session: Session, job: Job, now: datetime, *, prompt_tokens: int = 0,
                completion_tokens: int = 0, cost_usd: float = 0.0) -> None:
    """Use a charged job gains afterwards (a call that was still out when it was charged, or
    the estimate of one booked as unknown) goes into the ledger too; before the charge, the
    job's own totals carry it."""
    if job.charged_at is not None and (prompt_tokens or completion_tokens or cost_usd):
        _add_to_ledger(session, job.tenant_id, now, jobs=0, pages=0, prompt_tokens=prompt_tokens,
                       completion_tokens=completion_tokens, cost_usd=cost_usd)


def _add_to_ledger(session: Session, tenant_id: str, now: datetime, **amounts: Any) -> None:
    statement = (postgresql.insert if session.connection().dialect.name == "postgresql"
                 else sqlite.insert)(TenantUsage).values(tenant_id=tenant_id, day=now.date(),
                                                         **amounts)
    added = {name: getattr(TenantUsage, name) + getattr(statement.excluded, name)
             for name in amounts}
    session.execute(statement.on_conflict_do_update(index_elements=["tenant_id", "day"],
                                                    set_=added))


def plan_demand(plan: ChunkPlan, estimate: float | None) -> Demand:
    """A planned job's demand: the pages and prompt tokens of its plan, its estimated cost."""
    return Demand(pages=plan_pages(plan), tokens=plan.total_tokens, usd=estimate)


def job_demand(session: Session, tenant_id: str, spec: JobSpec, plan: ChunkPlan,
               profile: ModelProfile, settings: Settings) -> Demand:
    """The demand of a job planned in the API (``session``: the request's reads, where the
    tenant's row already is), its cost estimated only if the tenant has a dollar limit."""
    tenant = session.get(Tenant, tenant_id)
    limited = tenant is not None and tenant.max_usd_per_month is not None
    return plan_demand(plan, estimate_cost(spec, plan, profile, settings) if limited else None)
