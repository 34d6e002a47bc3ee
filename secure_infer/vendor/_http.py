"""Errors -> HTTP responses for the vendor server, in one place.

Every :class:`~secure_infer.errors.InferenceError` becomes ``{"error": code, "detail": text}``
with its ``http_status`` (plus ``Retry-After`` for busy/timeout/rate-limited answers; a
403/429 refusal of the access policy is one of them, its ``code`` the reason); Starlette's own
routing errors keep their status with a stable code; anything else is a logged 500 whose body
names only the exception type. Handlers raise, they never build error responses themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from secure_infer.errors import InferenceError
from secure_infer.wire import RateLimitedError, ServerBusyError, ServerTimeoutError

__all__ = ["EXCEPTION_HANDLERS", "error_response"]

log = logging.getLogger("secure_infer.vendor.server")


def error_response(exc: InferenceError) -> JSONResponse:
    """The JSON error body and status of ``exc``."""
    headers = {}
    retry = getattr(exc, "retry_after", None)
    retrying = ServerBusyError | ServerTimeoutError | RateLimitedError
    if isinstance(exc, retrying) and retry is not None:
        headers["Retry-After"] = str(retry)
    return JSONResponse(
        {"error": exc.code, "detail": str(exc)}, status_code=exc.http_status, headers=headers
    )


async def _inference_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InferenceError)
    level = logging.WARNING if exc.http_status < 500 else logging.ERROR
    log.log(level, "%s %s -> %d %s", request.method, request.url.path, exc.http_status, exc.code)
    if request.method == "HEAD":  # a HEAD answer has no body
        return Response(status_code=exc.http_status)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse({"error": code, "detail": str(exc.detail)}, status_code=exc.status_code)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return JSONResponse({"error": "internal_error", "detail": type(exc).__name__}, status_code=500)


EXCEPTION_HANDLERS: dict[type[Exception], Callable[[Request, Exception], Awaitable[Response]]] = {
    InferenceError: _inference_error,
    HTTPException: _http_error,
    Exception: _unexpected,
}
"""Starlette's ``exception_handlers`` for the vendor app."""
