from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select, update

from schemas.api import (
    DryRunOut,
    ErrorBody,
    JobCreate,
    JobList,
    JobOut,
    JobStatus,
    Plan,
    ResultOut,
    Usage,
)
from schemas.strict import check_schema
from service.api.documents import after_cursor
from service.auth import CurrentTenant, SessionDep
from service.errors import ApiError, not_found
from service.jobs import (
    attach_documents,
    estimate_cost,
    expected_output_tokens,
    job_document_ids,
    job_out,
    make_plan,
    new_job,
    owned_documents,
    plan_view,
    planning_error,
    reserved_output,
    start_job,
)
from service.models import Job, ModelCall, Result, WebhookAttempt, WebhookDelivery, utcnow
from service.planner import PlanningError
from service.webhooks import WebhookTargetRefused, check_target

ERRORS: dict[int | str, dict] = {  # type: ignore[type-arg]
    401: {"model": ErrorBody, "description": "unauthorized"},
    404: {"model": ErrorBody, "description": "not_found"},
    422: {"model": ErrorBody, "description": "invalid_request, invalid_schema, ..."},
    409: {"model": ErrorBody, "description": "job_not_succeeded, document_not_ready, document_failed"},
}
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=ERRORS)


def _owned_job(session, tenant, job_id: str) -> Job:  # type: ignore[no-untyped-def]
    job = session.get(Job, job_id)
    if job is None or job.tenant_id != tenant.id:
        raise not_found("job")
    return job


@router.post("", status_code=202, response_model=JobOut,
             responses={200: {"model": DryRunOut, "description": "dry_run: the plan and its cost"}})
def create_job(body: JobCreate, request: Request, tenant: CurrentTenant,
               session: SessionDep) -> JSONResponse:
    state = request.app.state
    job = new_job(tenant.id, body, state.settings.model)
    docs = owned_documents(session, tenant.id, body.document_ids)
    if body.webhook_url:
        try:
            check_target(body.webhook_url, state.settings.webhook_allowed_networks)
        except WebhookTargetRefused as exc:
            raise ApiError(422, "webhook_url_not_allowed", str(exc)) from None
    failed = [d.id for d in docs if d.status == "failed"]
    if failed:
        raise ApiError(409, "document_failed", f"document {failed[0]} failed ingestion")
    ready = all(d.status == "ready" for d in docs)
    if body.dry_run and not ready:
        raise ApiError(409, "document_not_ready",
                       "a document is still processing; try the dry run when it is ready",
                       {"Retry-After": "2"})
    plan = None
    # Ready documents are planned here (pages already counted, no parsing): the job starts at
    # once. Renders for pages_as_images and documents still processing go to the plan task.
    if ready and (body.dry_run or not body.pages_as_images):
        try:
            plan = make_plan(job, docs, state.profile, state.settings, state.storage)
        except PlanningError as exc:
            raise planning_error(exc) from None
        if body.dry_run or body.max_cost_usd is not None:
            reserved = reserved_output(state.settings, state.profile, job.options)
            estimate = estimate_cost(plan, state.profile,
                                     expected_output_tokens(check_schema(job.schema), reserved))
            if body.max_cost_usd is not None and estimate > body.max_cost_usd:
                raise ApiError(422, "budget_exceeded",
                               f"estimated cost ${estimate:.6f} is above max_cost_usd "
                               f"${body.max_cost_usd:.6f}")
            if body.dry_run:
                out = DryRunOut(plan=Plan(**plan_view(plan, body.document_ids)),
                                estimated_cost_usd=round(estimate, 8), profile=job.profile)
                return JSONResponse(out.model_dump(mode="json"), status_code=200)
    session.add(job)
    session.flush()
    attach_documents(session, job, docs)
    chunk_ids = start_job(session, job, plan, body.document_ids) if plan is not None else []
    session.commit()
    if plan is None:
        state.queue.send("longdoc.plan_job", job.id)
    for chunk_id in chunk_ids:
        state.queue.send("longdoc.extract_chunk", chunk_id)
    return JSONResponse(job_out(job, body.document_ids).model_dump(mode="json"),
                        status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})


@router.get("", response_model=JobList)
def list_jobs(tenant: CurrentTenant, session: SessionDep,
              status: JobStatus | None = None,
              limit: int = Query(50, ge=1, le=500),
              before: str | None = Query(None, description="the next_before of the last page"),
              ) -> JobList:
    """The tenant's jobs, newest first, optionally of one status."""
    query = select(Job).where(Job.tenant_id == tenant.id)
    if status:
        query = query.where(Job.status == status)
    query = after_cursor(session, query, Job, before)
    rows = session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)).all()
    items = [job_out(job, job_document_ids(session, job.id)) for job in rows[:limit]]
    return JobList(data=items, next_before=rows[limit - 1].id if len(rows) > limit else None)


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: str, tenant: CurrentTenant, session: SessionDep) -> JobOut:
    job = _owned_job(session, tenant, job_id)
    return job_out(job, job_document_ids(session, job.id))


@router.get("/{job_id}/result", response_model=ResultOut)
def get_result(job_id: str, tenant: CurrentTenant, session: SessionDep) -> ResultOut:
    job = _owned_job(session, tenant, job_id)
    if job.status != "succeeded":
        raise ApiError(409, "job_not_succeeded", f"the job is {job.status}; the result exists "
                       "once it has succeeded")
    result = session.get(Result, job.id)
    if result is None:
        raise ApiError(409, "job_not_succeeded", "the result is not stored yet")
    return ResultOut(job_id=job.id, model=job.model, data=result.data, warnings=result.warnings,
                     usage=Usage(prompt_tokens=job.prompt_tokens, cached_tokens=job.cached_tokens,
                                 completion_tokens=job.completion_tokens),
                     cost_usd=round(job.cost_usd, 8))


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel_job(job_id: str, tenant: CurrentTenant, session: SessionDep) -> JobOut:
    """Stops the job: chunks not yet sent are never sent."""
    job = _owned_job(session, tenant, job_id)
    session.execute(update(Job).where(Job.id == job.id, Job.status.in_(("queued", "running")))
                    .values(status="canceled", finished_at=utcnow()))
    session.commit()
    session.refresh(job)
    return job_out(job, job_document_ids(session, job.id))


@router.get("/{job_id}/calls")
def list_calls(job_id: str, tenant: CurrentTenant, session: SessionDep) -> dict:  # type: ignore[type-arg]
    """Every model call of the job: predicted against reported prompt tokens, usage, cost."""
    job = _owned_job(session, tenant, job_id)
    calls = session.scalars(select(ModelCall).where(ModelCall.job_id == job.id).order_by(ModelCall.id))
    return {"calls": [{
        "chunk_id": c.chunk_id, "model": c.model, "finish_reason": c.finish_reason,
        "predicted_prompt_tokens": c.predicted_prompt_tokens, "prompt_tokens": c.prompt_tokens,
        "cached_tokens": c.cached_tokens, "completion_tokens": c.completion_tokens,
        "cost_usd": round(c.cost_usd, 8), "gateway_cost_usd": c.gateway_cost_usd,
        "latency_ms": c.latency_ms, "at": c.created_at.isoformat()} for c in calls]}


@router.get("/{job_id}/webhooks")
def list_deliveries(job_id: str, tenant: CurrentTenant, session: SessionDep) -> dict:  # type: ignore[type-arg]
    """Every delivery of the job's events, with every attempt."""
    job = _owned_job(session, tenant, job_id)
    out = []
    for d in session.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job.id)
                             .order_by(WebhookDelivery.created_at)):
        attempts = session.scalars(select(WebhookAttempt).where(WebhookAttempt.delivery_id == d.id)
                                   .order_by(WebhookAttempt.id))
        out.append({"id": d.id, "event": d.event, "url": d.url, "status": d.status,
                    "attempts": [{"at": a.attempted_at.isoformat(), "status_code": a.status_code,
                                  "error": a.error, "duration_ms": a.duration_ms}
                                 for a in attempts],
                    "next_attempt_at": d.next_attempt_at.isoformat() if d.next_attempt_at else None})
    return {"deliveries": out}


@router.post("/{job_id}/webhooks/{delivery_id}/redeliver", status_code=202)
def redeliver(job_id: str, delivery_id: str, request: Request, tenant: CurrentTenant,
              session: SessionDep) -> dict:  # type: ignore[type-arg]
    job = _owned_job(session, tenant, job_id)
    delivery = session.get(WebhookDelivery, delivery_id)
    if delivery is None or delivery.job_id != job.id:
        raise not_found("delivery")
    delivery.status, delivery.attempts, delivery.next_attempt_at = "pending", 0, utcnow()
    session.commit()
    request.app.state.queue.send("longdoc.deliver_webhook", delivery.id)
    return {"id": delivery.id, "status": "pending"}
