"""Planning for jobs whose documents were not ready when the job was created (or that need
page renders): the budget, the fewest balanced chunks, one chunk row per call, dispatched as
slots allow."""

from __future__ import annotations

from schemas.errors import ErrorCode, LongdocError
from service.core.jobs import check_cost, make_plan, needs_page_renders
from service.core.planner import Plan
from service.store.dispatch import dispatch
from service.store.jobs import (
    document_pages,
    first_failed,
    job_documents,
    job_spec,
    lock_job,
    start_job,
)
from service.store.leases import claim, holds, release
from service.store.models import DocumentStatus, Job, JobStatus
from service.store.quotas import enforce, plan_demand
from workers.context import WorkerContext
from workers.parsing import ParseError
from workers.stages.common import fail_job
from workers.stages.ingest import ensure_page_images


def plan_job(ctx: WorkerContext, job_id: str) -> None:
    settings = ctx.settings
    with ctx.unit_of_work() as uow:
        job = uow.session.get(Job, job_id)
        if job is None:
            return
        if job.status == JobStatus.RUNNING:
            dispatch(uow, settings.dispatch_window)  # planned already: its chunks go on
            return
        if job.status != JobStatus.QUEUED:
            return
        docs = job_documents(uow.session, job_id)
        failed = first_failed(docs)
        if failed is not None:
            fail_job(uow, job, ErrorCode.DOCUMENT_FAILED,
                     f"document {failed.id} failed: {failed.error_code}")
            return
        if any(d.status != DocumentStatus.READY for d in docs):
            return  # the last document to be ready sends this task again
        if job.attempts >= settings.task_max_attempts:
            fail_job(uow, job, ErrorCode.PLANNING_FAILED, "planning was interrupted too often")
            return
        if not claim(uow.session, Job, job_id, [JobStatus.QUEUED], settings.lease_s):
            return
    ctx.keep_leases()
    spec = job_spec(job)
    plan: Plan | None = None
    estimate: float | None = None
    try:
        if spec.options.get("pages_as_images"):
            for doc in docs:
                if needs_page_renders(document_pages(doc)):
                    ensure_page_images(ctx, doc)
        plan = make_plan(spec, [document_pages(d) for d in docs], ctx.profile, settings,
                         ctx.storage)
        estimate = check_cost(spec, plan, ctx.profile, settings)
        error = None
    except (LongdocError, ParseError) as exc:
        error = exc
    with ctx.unit_of_work() as uow:
        job = lock_job(uow.session, job_id)
        if job.status != JobStatus.QUEUED or not holds(job):
            if holds(job):
                release(job)  # canceled meanwhile: not renewed forever (the purge waits for it)
            return
        release(job)
        if error is not None or plan is None:
            assert error is not None
            fail_job(uow, job, error.code, error.message)
            return
        try:  # pages are known now: the tenant's quotas, under its lock
            enforce(uow.session, job.tenant_id, plan_demand(plan, estimate), new_job=False)
        except LongdocError as exc:
            fail_job(uow, job, exc.code, exc.message)
            return
        start_job(uow, job, plan, [d.id for d in docs], settings.dispatch_window)
