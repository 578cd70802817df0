"""Every error leaves the API in one shape, ``{"error": {"code", "message"}}``, with the status
its code maps to here (one table for the whole API)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from schemas.errors import ErrorCode, LongdocError
from service.core.logs import log

STATUS: dict[str, int] = {
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.INVALID_MULTIPART: 400,
    ErrorCode.JOB_NOT_SUCCEEDED: 409,
    ErrorCode.DOCUMENT_NOT_READY: 409,
    ErrorCode.DOCUMENT_FAILED: 409,
    ErrorCode.DOCUMENT_IN_USE: 409,
    ErrorCode.REQUEST_TOO_LARGE: 413,
    ErrorCode.FILE_TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.QUOTA_EXCEEDED: 429,
    ErrorCode.NOT_READY: 503,
    # Everything else a request can be refused for is about its content: 422.
}
_CODE_OF_STATUS = {401: ErrorCode.UNAUTHORIZED, 404: ErrorCode.NOT_FOUND,
                   405: ErrorCode.METHOD_NOT_ALLOWED, 413: ErrorCode.REQUEST_TOO_LARGE,
                   415: ErrorCode.UNSUPPORTED_MEDIA_TYPE}


def status_of(code: str) -> int:
    return STATUS.get(code, 422)


def not_found(what: str) -> LongdocError:
    return LongdocError(ErrorCode.NOT_FOUND, f"{what} not found")


def error_response(status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status,
                        headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LongdocError)
    async def _longdoc(_: Request, exc: LongdocError) -> JSONResponse:
        return error_response(status_of(exc.code), exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        # Say where and what, never echo the submitted values back.
        parts = []
        for err in exc.errors()[:5]:
            loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{loc or 'body'}: {err.get('msg')}")
        return error_response(422, ErrorCode.INVALID_REQUEST, "; ".join(parts) or "invalid request")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # A bug or an outage still answers in the one shape, and never with internals.
        log.error("api.unexpected_error", error=type(exc).__name__)
        return error_response(500, ErrorCode.INTERNAL_ERROR, "internal error")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODE_OF_STATUS.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))
