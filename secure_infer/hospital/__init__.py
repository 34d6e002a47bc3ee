"""The hospital's side of two-party inference: its secret key, preprocessing, the vendor client.

Imports the shared core of :mod:`secure_infer` only, never :mod:`secure_infer.vendor`. Names are
imported lazily (PEP 562), so ``import secure_infer.hospital`` loads neither TenSEAL nor httpx.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    # the secret-key session
    "HospitalSession": "session",
    "apply_activations": "session",
    # public preprocessing from the manifest
    "PreprocessError": "preprocess",
    "preprocess": "preprocess",
    "preprocess_for_manifest": "preprocess",
    # the client of a vendor peer
    "ClientSettings": "client",
    "Exchange": "client",
    "InferenceResult": "client",
    "VendorClient": "client",
    "VendorError": "client",
    "VendorUnavailableError": "client",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'secure_infer.hospital' has no attribute {name!r}")
    return getattr(importlib.import_module(f"secure_infer.hospital.{module}"), name)
