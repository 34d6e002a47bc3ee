"""The vendor protocol's names, shared by the vendor's :mod:`secure_infer.vendor.server` and the
hospital's :mod:`secure_infer.hospital.client`.

Endpoints (all under ``/v1``, HTTPS with mutual TLS)::

    GET  /v1/health                      {"status": "ok", ...}
    GET  /v1/models                      {"models": [{"name", "version", "current"}]}
    GET  /v1/models/{ref}/manifest       {"manifest": <public manifest>, "spec": <PlanSpec JSON>}
    PUT  /v1/contexts?model={ref}        body: serialized public context -> {"sha256", "created"}
    HEAD /v1/contexts/{sha256}           200 if this hospital already uploaded it, else 404
    GET  /v1/contexts/{sha256}           {"sha256", "bytes"} or 404
    POST /v1/models/{ref}/infer          body: framed ciphertexts (secure_infer.framing)
                                         headers: X-BlindRead-Context, X-BlindRead-Job
                                         -> framed output ciphertexts

``{ref}`` is ``name`` (the vendor's current version) or ``name@version`` (pinned;
:mod:`secure_infer.modelref`). A hospital may be refused a model, a context beyond its quota
(403 ``access_denied`` / ``model_not_permitted`` / ``context_quota`` / ``certificate_revoked``)
or a request beyond its rate (429 ``rate_limited`` with ``Retry-After``).

A request carries no identifier of any kind: only the context hash and a fresh random job token
(128 bits, hex) that lets both sides' hash chains and logs be matched later. Errors are JSON
``{"error": code, "detail": text}`` with the code of the :mod:`secure_infer.errors` tree.
"""

from __future__ import annotations

import re
import secrets

from secure_infer.errors import InferenceError

__all__ = [
    "API_PREFIX",
    "H_CHAIN",
    "H_CONTEXT",
    "H_EVALUATE_SECONDS",
    "H_JOB",
    "H_MODEL_VERSION",
    "H_QUEUE_SECONDS",
    "H_SERVER_SECONDS",
    "AccessDeniedError",
    "BadRequestError",
    "RateLimitedError",
    "ServerBusyError",
    "ServerTimeoutError",
    "TooLargeError",
    "UnauthenticatedError",
    "check_job_token",
    "check_sha256",
    "new_job_token",
]

API_PREFIX = "/v1"
H_CONTEXT = "X-BlindRead-Context"
H_JOB = "X-BlindRead-Job"
H_MODEL_VERSION = "X-BlindRead-Model-Version"
H_CHAIN = "X-BlindRead-Chain-Entry"
H_EVALUATE_SECONDS = "X-BlindRead-Evaluate-Seconds"
H_QUEUE_SECONDS = "X-BlindRead-Queue-Seconds"
H_SERVER_SECONDS = "X-BlindRead-Server-Seconds"

_JOB_RE = re.compile(r"^[0-9a-f]{32}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class BadRequestError(InferenceError):
    """A header or parameter is missing or malformed."""

    code = "bad_request"
    http_status = 400


class UnauthenticatedError(InferenceError):
    """No verified client certificate reached the application (should be refused at TLS)."""

    code = "no_client_certificate"
    http_status = 401


class TooLargeError(InferenceError):
    """The request body exceeds the configured limit."""

    code = "request_too_large"
    http_status = 413


class ServerBusyError(InferenceError):
    """Every worker is busy and the queue is full; retry after ``retry_after`` seconds."""

    code = "busy"
    http_status = 503

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServerTimeoutError(InferenceError):
    """Reading the body or evaluating took longer than the configured timeout."""

    code = "timeout"
    http_status = 503

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AccessDeniedError(InferenceError):
    """This hospital may not do this (model not permitted, quota reached, certificate revoked,
    not enrolled); ``code`` names which."""

    code = "access_denied"
    http_status = 403


class RateLimitedError(InferenceError):
    """This hospital sent more requests per minute than it may; retry after ``retry_after``."""

    code = "rate_limited"
    http_status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def new_job_token() -> str:
    """A fresh random job token: 128 bits from the OS CSPRNG, 32 lowercase hex digits."""
    return secrets.token_hex(16)


def check_job_token(value: str | None) -> str:
    """Validate a job token header (32 lowercase hex digits, nothing else)."""
    if value is None or not _JOB_RE.match(value):
        raise BadRequestError(f"header {H_JOB} must be 32 lowercase hex digits (a random token)")
    return value


def check_sha256(value: str | None, what: str) -> str:
    """Validate a hex SHA-256 (64 lowercase hex digits)."""
    if value is None or not _SHA_RE.match(value):
        raise BadRequestError(f"{what} must be a SHA-256 in 64 lowercase hex digits")
    return value
