"""Keyed pseudonyms: how studies and patients are named in logs, audit entries and metrics.

A pseudonym is ``HMAC-SHA256(key, kind || value)`` truncated to 64 bits and printed as
``<kind>-<16 hex>``. Without the node's key nobody can link a pseudonym back to a UID or ID, not
even by hashing candidate values; with it, an admin can find a study's log lines by computing its
pseudonym (``blindread pseudonym``).
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["Pseudonymizer"]


class Pseudonymizer:
    """Maps identifiers to stable keyed pseudonyms."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("pseudonym key must be at least 16 bytes")
        self._key = key

    def __call__(self, value: str, kind: str = "st") -> str:
        mac = hmac.new(self._key, f"{kind}\x00{value}".encode(), hashlib.sha256).hexdigest()
        return f"{kind}-{mac[:16]}"

    def study(self, study_uid: str) -> str:
        """Pseudonym of a Study Instance UID."""
        return self(study_uid, "st")

    def patient(self, patient_id: str) -> str:
        """Pseudonym of a Patient ID."""
        return self(patient_id, "pt")

    def instance(self, sop_uid: str) -> str:
        """Pseudonym of a SOP Instance UID."""
        return self(sop_uid, "in")
