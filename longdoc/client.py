"""The synchronous client: ``Client(base_url, api_key)`` with ``documents``, ``jobs`` and
``extract`` (upload, create the job, follow it, return the result)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, overload

import httpx
from httpx_sse import connect_sse

from longdoc._common import (
    DEFAULT_TIMEOUT,
    LONG_POLL_S,
    RECONNECT_ATTEMPTS,
    CountingReader,
    Schema,
    Source,
    UploadHandler,
    UploadProgress,
    as_list,
    check,
    client_headers,
    is_url,
    job_body,
    long_poll_timeout,
    pages_by_document,
    parse_event,
    progress_of,
    reconnect_delay,
    resolve_config,
)
from longdoc.errors import JobFailed
from schemas.api import (
    DocumentList,
    DocumentOut,
    DocumentStatus,
    DryRunOut,
    JobEventOut,
    JobList,
    JobOut,
    JobStatus,
    PageOut,
    ResultOut,
)

EventHandler = Callable[[JobEventOut], None]


class Documents:
    def __init__(self, http: httpx.Client) -> None:
        self._http = http

    def upload(self, source: Source, *, password: str | None = None,
               on_progress: UploadProgress | None = None) -> DocumentOut:
        """Uploads a file (a path), or asks the server to fetch a URL (``http(s)://…``)."""
        if is_url(source):
            return self.upload_url(str(source))
        path = Path(source)
        data = {"password": password} if password else None
        with path.open("rb") as fh:
            body: Any = CountingReader(fh, on_progress) if on_progress else fh
            response = self._http.post("/v1/documents", files={"file": (path.name, body)},
                                       data=data)
        return DocumentOut.model_validate(check(response).json())

    def upload_url(self, url: str) -> DocumentOut:
        response = self._http.post("/v1/documents", json={"url": url})
        return DocumentOut.model_validate(check(response).json())

    def get(self, document_id: str) -> DocumentOut:
        return DocumentOut.model_validate(check(self._http.get(f"/v1/documents/{document_id}")).json())

    def list(self, *, limit: int = 50, before: str | None = None) -> DocumentList:
        params: dict[str, Any] = {"limit": limit, **({"before": before} if before else {})}
        return DocumentList.model_validate(check(self._http.get("/v1/documents", params=params)).json())

    def delete(self, document_id: str) -> None:
        check(self._http.delete(f"/v1/documents/{document_id}"))

    def page(self, document_id: str, n: int) -> PageOut:
        """The stored text of page ``n`` (1-based): what a citation quotes."""
        response = self._http.get(f"/v1/documents/{document_id}/pages/{n}")
        return PageOut.model_validate(check(response).json())

    def wait(self, document_id: str, *, timeout: float | None = None) -> DocumentOut:
        """The document once ingestion has finished (``ready`` or ``failed``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.2
        while True:
            doc = self.get(document_id)
            if doc.status != DocumentStatus.PROCESSING:
                return doc
            if deadline is not None and time.monotonic() + delay > deadline:
                raise TimeoutError(f"document {document_id} still processing after {timeout} s")
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)


class Jobs:
    def __init__(self, http: httpx.Client) -> None:
        self._http = http

    def create(self, document_ids: Sequence[str], schema: Schema, **options: Any) -> JobOut:
        """Starts a job; options are the API's job fields (``instructions``, ``mode``,
        ``webhook_url``, ``citations``, …). The server refuses those it does not know."""
        options.pop("dry_run", None)
        response = self._http.post("/v1/jobs", json=job_body(document_ids, schema, options))
        return JobOut.model_validate(check(response).json())

    def plan(self, document_ids: Sequence[str], schema: Schema, **options: Any) -> DryRunOut:
        """A dry run: the plan and its estimated cost, nothing sent to the model."""
        body = job_body(document_ids, schema, {**options, "dry_run": True})
        return DryRunOut.model_validate(check(self._http.post("/v1/jobs", json=body)).json())

    def get(self, job_id: str, *, wait: float = 0) -> JobOut:
        """The job; with ``wait`` the server answers as soon as it changes (at most ``wait`` s)."""
        if wait:
            response = self._http.get(f"/v1/jobs/{job_id}", params={"wait": wait},
                                      timeout=long_poll_timeout(wait))
        else:
            response = self._http.get(f"/v1/jobs/{job_id}")
        return JobOut.model_validate(check(response).json())

    def list(self, *, status: JobStatus | str | None = None, limit: int = 50,
             before: str | None = None) -> JobList:
        params: dict[str, Any] = {"limit": limit}
        params.update({k: v for k, v in (("status", status), ("before", before)) if v})
        return JobList.model_validate(check(self._http.get("/v1/jobs", params=params)).json())

    def wait(self, job_id: str, *, timeout: float | None = None) -> JobOut:
        """The job once it has ended, long-polling (no busy loop)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = LONG_POLL_S if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"job {job_id} has not ended after {timeout} s")
            job = self.get(job_id, wait=min(LONG_POLL_S, remaining))
            if job.status.ended:
                return job

    def result(self, job_id: str) -> ResultOut:
        return ResultOut.model_validate(check(self._http.get(f"/v1/jobs/{job_id}/result")).json())

    def cancel(self, job_id: str) -> JobOut:
        return JobOut.model_validate(check(self._http.post(f"/v1/jobs/{job_id}/cancel")).json())

    def events(self, job_id: str, *, last_event_id: int | None = None) -> Iterator[JobEventOut]:
        """Every event of the job in order, live, until it ends. A dropped connection is
        resumed after the last event received (``Last-Event-ID``): nothing is missed or
        repeated."""
        last, failures = last_event_id, 0
        while True:
            headers = {"Last-Event-ID": str(last)} if last is not None else {}
            ended = False
            try:
                with connect_sse(self._http, "GET", f"/v1/jobs/{job_id}/events",
                                 headers=headers) as source:
                    if source.response.status_code >= 400:
                        source.response.read()
                        check(source.response)
                    for sse in source.iter_sse():
                        event = parse_event(sse)
                        if event is None:
                            continue
                        last, failures = event.id, 0
                        yield event
                        ended = ended or event.ends_job
            except httpx.TransportError:
                failures += 1
                if failures > RECONNECT_ATTEMPTS:
                    raise
                time.sleep(reconnect_delay(failures))
                continue
            # A clean close: after the job's end, or resumed past it, or a server going away.
            if ended or self.get(job_id).status.ended:
                return


class Client:
    """``Client()`` reads LONGDOC_URL and LONGDOC_API_KEY; arguments win over them."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
                 transport: httpx.BaseTransport | None = None) -> None:
        url, key = resolve_config(base_url, api_key)
        self.base_url = url
        self._http = httpx.Client(base_url=url, headers=client_headers(key), timeout=timeout,
                                  transport=transport)
        self.documents = Documents(self._http)
        self.jobs = Jobs(self._http)

    def _upload_all(self, items: list[Source], password: str | None,
                    on_upload: UploadHandler | None) -> list[DocumentOut]:
        return [self.documents.upload(item, password=password,
                                      on_progress=progress_of(os.fspath(item), on_upload))
                for item in items]

    def plan(self, sources: Source | Sequence[Source], schema: Schema, *,
             timeout: float | None = None, pages: str | Mapping[str, str] | None = None,
             password: str | None = None, on_upload: UploadHandler | None = None,
             **options: Any) -> DryRunOut:
        """Uploads, waits for ingestion, and returns the plan and its estimated cost without
        running anything (a dry run)."""
        items = as_list(sources)
        docs = self._upload_all(items, password, on_upload)
        for doc in docs:
            self.documents.wait(doc.id, timeout=timeout)
        ids = [d.id for d in docs]
        return self.jobs.plan(ids, schema, pages=pages_by_document(pages, items, ids), **options)

    @overload
    def extract(self, sources: Source | Sequence[Source], schema: Schema, *,
                wait: Literal[True] = True, timeout: float | None = None,
                pages: str | Mapping[str, str] | None = None, password: str | None = None,
                on_upload: UploadHandler | None = None, on_event: EventHandler | None = None,
                **options: Any) -> ResultOut: ...

    @overload
    def extract(self, sources: Source | Sequence[Source], schema: Schema, *,
                wait: Literal[False], timeout: float | None = None,
                pages: str | Mapping[str, str] | None = None, password: str | None = None,
                on_upload: UploadHandler | None = None, on_event: EventHandler | None = None,
                **options: Any) -> JobOut: ...

    def extract(self, sources: Source | Sequence[Source], schema: Schema, *, wait: bool = True,
                timeout: float | None = None, pages: str | Mapping[str, str] | None = None,
                password: str | None = None, on_upload: UploadHandler | None = None,
                on_event: EventHandler | None = None, **options: Any) -> ResultOut | JobOut:
        """One job over every given file or URL: uploads them, creates the job (it starts as
        soon as ingestion has finished), follows it and returns its result — or, with
        ``wait=False``, the job as created. Raises ``JobFailed`` when the job fails or is
        canceled, ``APIError`` when a request is refused. ``on_event`` receives every event of
        the job (ingestion pages, chunks, tokens and cost) as it happens."""
        if options.pop("dry_run", False):
            raise ValueError("for a dry run call Client.plan()")
        items = as_list(sources)
        docs = self._upload_all(items, password, on_upload)
        ids = [d.id for d in docs]
        job = self.jobs.create(ids, schema, pages=pages_by_document(pages, items, ids), **options)
        if not wait:
            return job
        if on_event is None:
            final = self.jobs.wait(job.id, timeout=timeout)
        else:
            deadline = None if timeout is None else time.monotonic() + timeout
            for event in self.jobs.events(job.id):
                on_event(event)
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {job.id} has not ended after {timeout} s")
            final = self.jobs.get(job.id)
        if final.status != JobStatus.SUCCEEDED:
            raise JobFailed(final)
        return self.jobs.result(job.id)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
