"""Every error a user can be told about: one base class, one list of codes.

The API maps each code to its HTTP status in one table (``service.api.errors``); the same codes
end failed documents and jobs, so a client handles them the same way wherever they appear.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    # Requests
    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    INVALID_REQUEST = "invalid_request"
    INVALID_MULTIPART = "invalid_multipart"
    INVALID_SCHEMA = "invalid_schema"
    REQUEST_TOO_LARGE = "request_too_large"
    FILE_TOO_LARGE = "file_too_large"
    EMPTY_FILE = "empty_file"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    INVALID_WEBHOOK_URL = "invalid_webhook_url"
    WEBHOOK_URL_NOT_ALLOWED = "webhook_url_not_allowed"
    INVALID_URL = "invalid_url"
    URL_NOT_ALLOWED = "url_not_allowed"
    URL_FETCH_FAILED = "url_fetch_failed"
    DOCUMENT_NOT_READY = "document_not_ready"
    DOCUMENT_FAILED = "document_failed"
    JOB_NOT_SUCCEEDED = "job_not_succeeded"
    BUDGET_EXCEEDED = "budget_exceeded"
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    INVALID_PAGES = "invalid_pages"  # a job's page ranges (the message says which and why)
    QUOTA_EXCEEDED = "quota_exceeded"  # a tenant limit (longdoc tenants set-limits)
    DOCUMENT_IN_USE = "document_in_use"  # a queued or running job reads it, or it is processing
    NOT_READY = "not_ready"
    # Documents
    DOCUMENT_UNREADABLE = "document_unreadable"
    DOCUMENT_TOO_LARGE = "document_too_large"
    DOCUMENT_EMPTY = "document_empty"
    IMAGE_TOO_LARGE = "image_too_large"
    PDF_ENCRYPTED = "pdf_encrypted"
    PDF_PASSWORD_INCORRECT = "pdf_password_incorrect"
    # Planning
    BUDGET_TOO_SMALL = "budget_too_small"
    PAGE_TOO_LARGE = "page_too_large"
    PAGE_IMAGE_MISSING = "page_image_missing"
    PLANNING_FAILED = "planning_failed"
    # The model
    MODEL_UNAVAILABLE = "model_unavailable"
    MODEL_AUTH_FAILED = "model_auth_failed"
    MODEL_QUOTA_EXHAUSTED = "model_quota_exhausted"
    MODEL_NOT_FOUND = "model_not_found"
    MODEL_REQUEST_REJECTED = "model_request_rejected"
    MODEL_REFUSED = "model_refused"
    MODEL_OUTPUT_INVALID = "model_output_invalid"
    RATE_LIMITED = "rate_limited"
    CHUNK_FAILED = "chunk_failed"
    # Anything unexpected
    INTERNAL_ERROR = "internal_error"


class LongdocError(Exception):
    """An outcome with a code and a message a user may read (never document content)."""

    def __init__(self, code: ErrorCode | str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.headers = str(code), message, headers

    def __str__(self) -> str:
        return self.message
