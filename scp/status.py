"""DICOM status codes our Storage SCP answers with (PS3.4 Annex B.2.3).

The 0xCxxx values are all "Error: Cannot understand" for the Storage Service Class; we use
distinct low bytes so an operator can tell from the sender's log why an instance was refused.

:func:`for_error` is the one place an exception becomes a status: both receive paths (our fast
path and pynetdicom's) answer through it, so they cannot drift apart.
"""

from __future__ import annotations

import errno
from typing import NamedTuple

from scp.errors import InvalidInstanceError, MalformedDatasetError, SpoolFullError

__all__ = [
    "CANNOT_DECODE",
    "HANDLER_FAILED",
    "MISSING_SERIES_UID",
    "MISSING_SOP_UID",
    "MISSING_STUDY_UID",
    "OUT_OF_RESOURCES",
    "SPOOL_WRITE_FAILED",
    "SUCCESS",
    "Refusal",
    "describe",
    "for_error",
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
HANDLER_FAILED = 0xC000
"""An unexpected exception in our C-STORE handler (a bug); nothing is stored."""

_TEXT = {
    SUCCESS: "success",
    OUT_OF_RESOURCES: "out of resources: spool below free-space watermark",
    CANNOT_DECODE: "dataset cannot be decoded",
    MISSING_STUDY_UID: "Study Instance UID missing",
    MISSING_SERIES_UID: "Series Instance UID missing",
    MISSING_SOP_UID: "SOP Instance UID missing or inconsistent",
    SPOOL_WRITE_FAILED: "spool write failed",
    HANDLER_FAILED: "C-STORE handler failed",
}


def describe(status: int) -> str:
    """Human-readable meaning of one of our statuses."""
    return _TEXT.get(status, f"status 0x{status:04X}")


class Refusal(NamedTuple):
    """A failure status to answer and the reason to log (no identifiers in it)."""

    status: int
    reason: str


def for_error(exc: BaseException) -> Refusal:
    """The C-STORE answer for an instance whose receipt raised ``exc``.

    See the tree in :mod:`scp.errors`. :class:`~scp.errors.ProtocolError` never gets here:
    a peer that breaks the protocol is aborted, not answered.
    """
    if isinstance(exc, InvalidInstanceError):
        return Refusal(exc.status, exc.reason)
    if isinstance(exc, MalformedDatasetError):
        return Refusal(CANNOT_DECODE, str(exc))
    if isinstance(exc, SpoolFullError):
        return Refusal(OUT_OF_RESOURCES, "spool below its free-space mark")
    if isinstance(exc, OSError):
        if exc.errno == errno.ENOSPC:
            return Refusal(OUT_OF_RESOURCES, "spool file system full")
        return Refusal(SPOOL_WRITE_FAILED, f"spool write error {exc.errno}")
    return Refusal(HANDLER_FAILED, f"unexpected {type(exc).__name__}")
