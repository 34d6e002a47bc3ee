"""The secure_infer exception tree.

Every error secure_infer raises descends from :class:`InferenceError`, so a caller (the node,
the vendor CLI) needs one ``except`` for the whole package. Each error carries a stable
machine-readable ``code`` and an ``http_status``; the vendor server turns any of them into
``{"error": code, "detail": str(exc)}`` with that status in one place
(:mod:`secure_infer.vendor._http`). Messages never contain pixel values, identifiers or key
material::

    InferenceError                inference_error      500  errors
    |-- CompileError              unsupported_model    422  errors
    |-- ParameterError            weak_parameters      400  errors
    |-- ContextError              malformed_context..  400  errors
    |   `-- UnknownContextError   unknown_context      404  errors
    |-- CiphertextError           malformed_ciphertext 400  errors
    |-- ModelNotFoundError        unknown_model        404  errors
    |-- ManifestError             invalid_manifest     500  manifest
    |-- ChainError                broken_chain         500  chain
    |-- FramingError              malformed_request    400  framing
    |-- BadRequestError           bad_request          400  wire
    |-- UnauthenticatedError      no_client_certificate 401 wire
    |-- TooLargeError             request_too_large    413  wire
    |-- ServerBusyError           busy                 503  wire (+ Retry-After)
    |-- ServerTimeoutError        timeout              503  wire (+ Retry-After)
    |-- PreprocessError           bad_input            422  hospital.preprocess (also ValueError)
    |-- VendorError               the vendor's code/status  hospital.client
    |-- VendorUnavailableError    vendor_unavailable   503  hospital.client
    |-- JobReusedError            job_token_reused     409  vendor.server
    |-- RemoteError               a worker's code/status    vendor._pool
    |-- TwoPartyError             twopc_error          500  twopc.party
    |   |-- ProgramMismatchError  program_mismatch     409  twopc.party
    |   |-- UnknownSessionError   unknown_session      403  twopc.party
    |   `-- PeerLostError         peer_lost            503  twopc.party
    `-- VendorConfigError         invalid_config       500  vendor.config

Only the root and the errors of the core (this module) are defined here; each other error
lives beside the code that raises it and is re-exported from :mod:`secure_infer`.
"""

from __future__ import annotations

__all__ = [
    "CiphertextError",
    "CompileError",
    "ContextError",
    "InferenceError",
    "ModelNotFoundError",
    "ParameterError",
    "UnknownContextError",
]


class InferenceError(Exception):
    """Base of every secure_infer error."""

    code = "inference_error"
    http_status = 500

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class CompileError(InferenceError):
    """The ONNX model cannot be compiled to an HE plan (names the node, op type, what to do)."""

    code = "unsupported_model"
    http_status = 422

    def __init__(self, message: str, node: str | None = None, op_type: str | None = None) -> None:
        super().__init__(message)
        self.node = node
        self.op_type = op_type


class ParameterError(InferenceError):
    """CKKS parameters are weaker than 128-bit security or cannot fit the plan's depth."""

    code = "weak_parameters"
    http_status = 400


class ContextError(InferenceError):
    """An uploaded public context is unusable.

    Codes: ``malformed_context``, ``secret_key_present``, ``weak_parameters``, ``wrong_scheme``,
    ``parameter_mismatch``, ``unknown_context``.
    """

    code = "malformed_context"
    http_status = 400


class UnknownContextError(ContextError):
    """This hospital never uploaded the public context it names (``GET /v1/contexts/{sha}``)."""

    code = "unknown_context"
    http_status = 404


class CiphertextError(InferenceError):
    """A ciphertext is truncated, tampered, for another context, or the count is wrong.

    Codes: ``malformed_ciphertext``, ``wrong_context``, ``wrong_count``.
    """

    code = "malformed_ciphertext"
    http_status = 400


class ModelNotFoundError(InferenceError):
    """The requested model name/version is not served."""

    code = "unknown_model"
    http_status = 404
