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
    # errors
    "CiphertextError": "errors",
    "CompileError": "errors",
    "ContextError": "errors",
    "InferenceError": "errors",
    "ModelNotFoundError": "errors",
    "ParameterError": "errors",
    # the hash-chain format (the vendor's request chain and the hospital's audit ledger)
    "GENESIS": "chain",
    "ChainError": "chain",
    "ChainHead": "chain",
    "LinkFault": "chain",
    "append_line": "chain",
    "body_hash": "chain",
    "canonical_json": "chain",
    "cut_torn_tail": "chain",
    "read_last_line": "chain",
    "signing_input": "chain",
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
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'secure_infer' has no attribute {name!r}")
    return getattr(importlib.import_module(f"secure_infer.{module}"), name)
