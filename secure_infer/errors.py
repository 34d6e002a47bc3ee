"""The secure_infer exception tree.

Each error carries a stable machine-readable ``code`` that the vendor server returns in its JSON
error body (``{"error": code, "detail": str(exc)}``) with ``http_status``; messages never contain
pixel values, identifiers or key material.
"""

from __future__ import annotations

__all__ = [
    "CiphertextError",
    "CompileError",
    "ContextError",
    "InferenceError",
    "ManifestError",
    "ModelNotFoundError",
    "ParameterError",
]

from secure_infer.manifest import ManifestError


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
