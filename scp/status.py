"""DICOM status codes our Storage SCP answers with (PS3.4 Annex B.2.3).

The 0xCxxx values are all "Error: Cannot understand" for the Storage Service Class; we use
distinct low bytes so an operator can tell from the sender's log why an instance was refused.
"""

from __future__ import annotations

__all__ = [
    "CANNOT_DECODE",
    "MISSING_SERIES_UID",
    "MISSING_SOP_UID",
    "MISSING_STUDY_UID",
    "OUT_OF_RESOURCES",
    "SPOOL_WRITE_FAILED",
    "SUCCESS",
    "describe",
]

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
"""Refused: spool free space below ``min_free_bytes``; nothing written."""
CANNOT_DECODE = 0xC001
"""The dataset bytes cannot be parsed in the negotiated transfer syntax."""
MISSING_STUDY_UID = 0xC002
"""(0020,000D) Study Instance UID absent or empty."""
MISSING_SERIES_UID = 0xC003
"""(0020,000E) Series Instance UID absent or empty."""
MISSING_SOP_UID = 0xC004
"""(0008,0018) SOP Instance UID absent, empty, or not the C-STORE's Affected SOP Instance UID."""
SPOOL_WRITE_FAILED = 0xC005
"""The spool write failed with an I/O error other than lack of space."""

_TEXT = {
    SUCCESS: "success",
    OUT_OF_RESOURCES: "out of resources: spool below free-space watermark",
    CANNOT_DECODE: "dataset cannot be decoded",
    MISSING_STUDY_UID: "Study Instance UID missing",
    MISSING_SERIES_UID: "Series Instance UID missing",
    MISSING_SOP_UID: "SOP Instance UID missing or inconsistent",
    SPOOL_WRITE_FAILED: "spool write failed",
}


def describe(status: int) -> str:
    """Human-readable meaning of one of our statuses."""
    return _TEXT.get(status, f"status 0x{status:04X}")
