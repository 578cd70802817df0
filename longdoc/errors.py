"""What the client raises: the API's own error code and HTTP status, never a bare HTTP error."""

from __future__ import annotations

from schemas.api import JobOut


class LongdocError(Exception):
    """Anything the client could not do."""


class ConfigurationError(LongdocError, ValueError):
    """No server or no API key: pass them, or set LONGDOC_URL and LONGDOC_API_KEY."""


class APIError(LongdocError):
    """The API refused a request: ``code`` is its error code (``not_found``,
    ``invalid_schema``, …), ``status`` the HTTP status."""

    def __init__(self, code: str, message: str, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{code}: {message}" + (f" (HTTP {status})" if status else ""))
        self.code, self.message, self.status, self.retry_after = code, message, status, retry_after


class JobFailed(APIError):
    """The job ended without a result (failed or canceled); ``job`` is its final state."""

    def __init__(self, job: JobOut) -> None:
        code = job.error.code if job.error else str(job.status)
        message = job.error.message if job.error else f"the job was {job.status}"
        super().__init__(code, message)
        self.job = job
