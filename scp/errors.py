"""The ``scp`` exception tree; mapped to DICOM statuses at the edges (see ``scp.status``)."""

from __future__ import annotations

__all__ = ["InvalidInstanceError", "ScpError", "SendError", "SpoolFullError"]


class ScpError(Exception):
    """Base class of every error raised by the ``scp`` package.

    Messages never contain PHI: only status codes, AE titles, addresses and pseudonyms.
    """


class SpoolFullError(ScpError):
    """Free space on the spool filesystem is below the configured watermark."""


class InvalidInstanceError(ScpError):
    """A received dataset cannot be decoded or lacks a required UID.

    ``status`` is the DICOM failure status the C-STORE is answered with.
    """

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"0x{status:04X} {reason}")


class SendError(ScpError):
    """Sending to a destination failed (no association, or a failure status)."""
