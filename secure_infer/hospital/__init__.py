"""The hospital's side of two-party inference: its secret key, preprocessing, the vendor client.

Imports the shared core of :mod:`secure_infer` only, never :mod:`secure_infer.vendor`. Names are
imported lazily (PEP 562), so ``import secure_infer.hospital`` loads neither TenSEAL nor httpx.
"""

from __future__ import annotations

from secure_infer._lazy import lazy_getattr

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
    # the two-party (Cheetah) engine's hospital party
    "TwoPartySession": "twopc",
}

__all__ = sorted(_WHERE)

__getattr__ = lazy_getattr(__name__, _WHERE)
