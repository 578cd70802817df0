from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from schemas.api import (
    CallList,
    DeliveryList,
    DryRunOut,
    ErrorBody,
    JobCreate,
    JobList,
    JobOut,
    JobStatus,
    Plan,
    RedeliveryOut,
    ResultOut,
)
from schemas.errors import ErrorCode, LongdocError
from schemas.strict import check_schema
from schemas.tasks import Task
from service.api.deps import CurrentTenant, Services, ServicesDep, SessionDep
from service.api.errors import not_found
from service.api.idempotency import Once, key_of, remember, replay, request_hash
from service.api.routes.common import after_cursor, error_responses
from service.api.routes.events import wait_for_change
from service.api.uploads import parse_json, read_json_bytes
from service.core.jobs import check_cost, make_plan, plan_view, selected_pages
from service.core.outbound import check_target
from service.store.db import Database
from service.store.dispatch import cancel_chunks, dispatch
from service.store.events import last_event_id
from service.store.jobs import (
    attach_documents,
    document_pages,
    first_failed,
    job_document_ids,
    job_spec,
    lock_documents,
    lock_job,
    new_job,
    owned_documents,
    start_job,
)
from service.store.models import (
    DeliveryStatus,
    DocumentStatus,
    Job,
    ModelCall,
    Result,
    Tenant,
    WebhookAttempt,
    WebhookDelivery,
    is_id,
    utcnow,
)
from service.store.quotas import enforce, job_demand
from service.store.views import call_out, delivery_out, job_out, job_usage

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=error_responses(
    _401="unauthorized", _404="not_found",
    _409="job_not_succeeded, document_not_ready, document_failed",
    _422="invalid_request, invalid_schema, invalid_pages, webhook_url_not_allowed, "
         "budget_exceeded, ...",
    _429="quota_exceeded (POST /v1/jobs; Retry-After says when to try again)"))


def _owned_job(session: Session, tenant: Tenant, job_id: str) -> Job:
    job = session.get(Job, job_id) if is_id(job_id, "job") else None
    if job is None or job.tenant_id != tenant.id:
        raise not_found("job")
    return job


_JOB_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": JobCreate.model_json_schema(by_alias=True)}}}}


@router.post("", status_code=202, response_model=JobOut, openapi_extra=_JOB_BODY,
             responses={200: {"model": DryRunOut, "description": "dry_run: the plan and its cost"},
                        413: {"model": ErrorBody, "description": "request_too_large"},
                        415: {"model": ErrorBody, "description": "unsupported_media_type"}})
async def create_job(request: Request, tenant: CurrentTenant, session: SessionDep,
                     services: ServicesDep) -> JSONResponse:
    """Checks the schema, the documents and the webhook, plans ready documents at once, and
    queues the job. The body is read only once the key is known. With ``Idempotency-Key``, a
    retry gets the original response."""
    key = key_of(request)
    raw = await read_json_bytes(request, services.settings.max_json_bytes)
    body = parse_json(raw, JobCreate)
    once = Once(key, request_hash(services.settings, raw)) if key and not body.dry_run else None
    return await run_in_threadpool(_create_job, body, tenant.id, session, services, once)


def _create_job(body: JobCreate, tenant_id: str, session: Session, services: Services,
                once: Once | None) -> JSONResponse:
    settings, profile = services.settings, services.profile
    if once is not None:
        earlier = replay(session, tenant_id, "jobs", once.key, once.digest)
        if earlier is not None:
            return earlier
    check_schema(body.json_schema)
    job = new_job(tenant_id, body, settings.model)
    if body.webhook_url:
        job.webhook_url = check_target(body.webhook_url, settings.webhook_allowed_networks).url
    docs = owned_documents(session, tenant_id, body.document_ids)
    failed = first_failed(docs)
    if failed is not None:
        raise LongdocError(ErrorCode.DOCUMENT_FAILED, f"document {failed.id} failed ingestion")
    ready = all(d.status == DocumentStatus.READY for d in docs)
    if body.dry_run and not ready:
        raise LongdocError(ErrorCode.DOCUMENT_NOT_READY,
                           "a document is still processing; try the dry run when it is ready",
                           {"Retry-After": "2"})
    if ready:
        selected_pages(job.options, [document_pages(d) for d in docs])  # 422 now, not a failed job
    plan = None
    # Ready documents are planned here (pages already counted, no parsing): the job starts at
    # once. Renders for pages_as_images and documents still processing go to the plan task.
    if ready and (body.dry_run or not body.pages_as_images):
        spec = job_spec(job)
        plan = make_plan(spec, [document_pages(d) for d in docs], profile, settings,
                         services.storage)
        if body.dry_run or body.max_cost_usd is not None:
            estimate = check_cost(spec, plan, profile, settings)
        if body.dry_run:
            out = DryRunOut(plan=Plan(**plan_view(plan, body.document_ids)),
                            estimated_cost_usd=round(estimate, 8), profile=job.profile)
            return JSONResponse(out.model_dump(mode="json"), status_code=200)
    demand = job_demand(session, tenant_id, job_spec(job), plan, profile, settings) \
        if plan is not None else None
    session.close()  # the checks are done: nothing of the read transaction is held while writing
    location = f"/v1/jobs/{job.id}"
    try:
        with services.unit_of_work() as uow:
            lock_documents(uow.session, tenant_id, body.document_ids)  # none deleted meanwhile
            enforce(uow.session, tenant_id, demand, new_job=True)  # counted under the tenant lock
            uow.session.add(job)
            uow.session.flush()
            attach_documents(uow.session, job, docs)
            if plan is not None:
                start_job(uow, job, plan, body.document_ids, settings.dispatch_window)
            else:
                # A document that became ready since it was read sends nothing for this job (its
                # ingestion looked for waiting jobs before this one existed): the plan task checks.
                job.dispatched_at = utcnow()
                uow.send(Task.PLAN_JOB, job.id)
            view = job_out(job, body.document_ids).model_dump(mode="json")
            if once is not None:
                remember(uow, tenant_id, "jobs", once.key, once.digest, 202, view, location)
    except IntegrityError:
        if once is None:
            raise
        with services.db.session(readonly=True) as fresh:  # a concurrent retry got there first
            earlier = replay(fresh, tenant_id, "jobs", once.key, once.digest)
        if earlier is None:
            raise
        return earlier
    return JSONResponse(view, status_code=202, headers={"Location": location})


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
    query = after_cursor(session, query, Job, before, tenant.id)
    rows = session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)).all()
    items = [job_out(job, job_document_ids(session, job.id)) for job in rows[:limit]]
    return JobList(data=items, next_before=rows[limit - 1].id if len(rows) > limit else None)


def _job_view(db: Database, job_id: str) -> JobOut:
    with db.session(readonly=True) as session:
        job = session.get(Job, job_id)
        if job is None:
            raise not_found("job")  # deleted while the client waited
        return job_out(job, job_document_ids(session, job.id))


@router.get("/{job_id}", response_model=JobOut)
async def get_job(job_id: str, request: Request, tenant: CurrentTenant, session: SessionDep,
                  services: ServicesDep,
                  wait: float = Query(0, ge=0, le=60, description=(
                      "long-poll: answer as soon as the job changes, or after this many "
                      "seconds; at once when it has ended"))) -> JobOut:
    def current() -> tuple[int, JobOut]:
        if not is_id(job_id, "job"):
            raise not_found("job")
        seen = last_event_id(session, job_id)  # first: a change after this read is noticed
        job = _owned_job(session, tenant, job_id)
        return seen, job_out(job, job_document_ids(session, job.id))

    seen, view = await run_in_threadpool(current)
    if not wait or view.status.ended:
        return view
    await run_in_threadpool(session.close)  # no transaction is held while waiting
    await wait_for_change(request, services.db, job_id, seen, wait)
    return await run_in_threadpool(_job_view, services.db, job_id)


@router.get("/{job_id}/result", response_model=ResultOut)
def get_result(job_id: str, tenant: CurrentTenant, session: SessionDep) -> ResultOut:
    job = _owned_job(session, tenant, job_id)
    if job.status != JobStatus.SUCCEEDED:
        raise LongdocError(ErrorCode.JOB_NOT_SUCCEEDED,
                           f"the job is {job.status}; the result exists once it has succeeded")
    result = session.get(Result, job.id)
    if result is None:
        raise LongdocError(ErrorCode.JOB_NOT_SUCCEEDED, "the result is not stored yet")
    return ResultOut(job_id=job.id, model=job.model, data=result.data, warnings=result.warnings,
                     sources=result.sources, usage=job_usage(job), cost_usd=round(job.cost_usd, 8))


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel_job(job_id: str, tenant: CurrentTenant, session: SessionDep,
               services: ServicesDep) -> JobOut:
    """Stops the job: chunks not yet sent are never sent."""
    _owned_job(session, tenant, job_id)
    session.close()
    with services.unit_of_work() as uow:
        job = lock_job(uow.session, job_id)
        if job.status in (JobStatus.QUEUED, JobStatus.RUNNING):
            job.status, job.finished_at = JobStatus.CANCELED, utcnow()
            # Its chunks not yet running give their dispatch slots to other jobs now.
            if cancel_chunks(uow.session, job.id):
                dispatch(uow, services.settings.dispatch_window)
        uow.session.flush()
        return job_out(job, job_document_ids(uow.session, job.id))


@router.get("/{job_id}/calls", response_model=CallList)
def list_calls(job_id: str, tenant: CurrentTenant, session: SessionDep) -> CallList:
    """Every model call of the job: predicted against reported prompt tokens, usage, cost."""
    job = _owned_job(session, tenant, job_id)
    calls = session.scalars(select(ModelCall).where(ModelCall.job_id == job.id).order_by(ModelCall.id))
    return CallList(calls=[call_out(c) for c in calls])


@router.get("/{job_id}/webhooks", response_model=DeliveryList)
def list_deliveries(job_id: str, tenant: CurrentTenant, session: SessionDep) -> DeliveryList:
    """Every delivery of the job's events, with every attempt."""
    job = _owned_job(session, tenant, job_id)
    deliveries = session.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job.id)
                                 .order_by(WebhookDelivery.created_at))
    return DeliveryList(deliveries=[
        delivery_out(d, list(session.scalars(select(WebhookAttempt)
                                             .where(WebhookAttempt.delivery_id == d.id)
                                             .order_by(WebhookAttempt.id))))
        for d in deliveries])


@router.post("/{job_id}/webhooks/{delivery_id}/redeliver", status_code=202,
             response_model=RedeliveryOut)
def redeliver(job_id: str, delivery_id: str, tenant: CurrentTenant, session: SessionDep,
              services: ServicesDep) -> RedeliveryOut:
    job = _owned_job(session, tenant, job_id)
    if not is_id(delivery_id, "msg"):
        raise not_found("delivery")
    session.close()
    with services.unit_of_work() as uow:
        delivery = uow.session.get(WebhookDelivery, delivery_id)
        if delivery is None or delivery.job_id != job.id:
            raise not_found("delivery")
        delivery.status, delivery.attempts = DeliveryStatus.PENDING, 0
        delivery.next_attempt_at = utcnow()
        uow.send(Task.DELIVER_WEBHOOK, delivery.id)
        return RedeliveryOut(id=delivery.id, status=delivery.status)
