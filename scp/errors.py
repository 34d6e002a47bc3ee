"""The ``scp`` exception tree; mapped to DICOM answers in one place (:func:`scp.status.for_error`).

Every error the package raises on purpose descends from :class:`ScpError`, so a caller can catch
the package's failures without catching its bugs::

    Exception
    └── ScpError                    root; messages never contain PHI
        ├── SpoolFullError          free space below the watermark     -> 0xA700
        ├── InvalidInstanceError    a received data set lacks a UID    -> its .status (0xC002-4)
        ├── MalformedDatasetError   bytes break the encoding rules     -> 0xC001
        │                           (also a ValueError, as it always was)
        ├── ProtocolError           the peer broke the upper layer     -> A-ABORT, no status
        └── SendError               our SCU's C-STORE/C-ECHO failed    (nothing is answered)

Not ours, but answered by the same mapping while receiving: an ``OSError`` writing the spool
(``ENOSPC`` -> 0xA700, any other -> 0xC005), and any other exception in a C-STORE handler, which
is a bug (-> 0xC000). Misuse of the API (e.g. writing to a committed spool file) raises plain
``ValueError``: that is a programming error, not an outcome to handle.
"""

from __future__ import annotations

__all__ = [
    "InvalidInstanceError",
    "MalformedDatasetError",
    "ProtocolError",
    "ScpError",
    "SendError",
    "SpoolFullError",
]


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


class MalformedDatasetError(ScpError, ValueError):
    """The bytes do not follow the DICOM encoding rules of the negotiated transfer syntax.

    Raised by the data set walker; the C-STORE is refused with 0xC001 (cannot decode).
    """


class ProtocolError(ScpError):
    """The peer broke the upper-layer or DIMSE encoding rules (answered by A-ABORT)."""


class SendError(ScpError):
    """Sending to a destination failed (no association, or a failure status)."""
