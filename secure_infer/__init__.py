"""Two-party CKKS inference: parameters, keys, ONNX -> HE plan compiler, evaluator, client, server.

Knows nothing of DICOM networking. Names are imported lazily (PEP 562): ``import secure_infer``
stays cheap, and TenSEAL, onnxruntime or uvicorn load only when the part that needs them is used.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    # model package
    "Manifest": "manifest",
    "ManifestError": "manifest",
    "load_manifest": "manifest",
    "OutputLabel": "manifest",
    # errors
    "CiphertextError": "errors",
    "CompileError": "errors",
    "ContextError": "errors",
    "InferenceError": "errors",
    "ModelNotFoundError": "errors",
    "ParameterError": "errors",
    # parameters, compiler, sessions
    "CkksParams": "params",
    "select_params": "params",
    "compile_onnx": "compiler",
    "HospitalSession": "session",
    "PlanSpec": "session",
    "PublicContext": "session",
    "VendorModel": "session",
    # public preprocessing
    "PreprocessError": "preprocess",
    "preprocess": "preprocess",
    "preprocess_for_manifest": "preprocess",
    # the vendor link
    "ClientSettings": "client",
    "InferenceResult": "client",
    "VendorClient": "client",
    "VendorError": "client",
    "VendorUnavailableError": "client",
    "ServerSettings": "server",
    "TlsFiles": "server",
    "serve": "server",
    "create_ca": "certs",
    "issue_client_cert": "certs",
    "issue_server_cert": "certs",
    "dicom_like_phantom": "demo.phantoms",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'secure_infer' has no attribute {name!r}")
    return getattr(importlib.import_module(f"secure_infer.{module}"), name)
