"""DICOM networking: association policy, Storage SCP with durable spool, study completion, SCU.

Knows nothing of encryption, routing rules or the node's config file: callers pass plain
settings dataclasses and a ``log_id`` pseudonymizer.
"""

from __future__ import annotations

from scp import status
from scp._policy import AssociationPolicy, Rejection
from scp._sender import SendReport, StorageSender, echo
from scp._server import ACCEPTED_TRANSFER_SYNTAXES, StorageServer
from scp._settings import (
    CompletionSettings,
    DestinationSettings,
    LogId,
    RetryBudget,
    ScpSettings,
    SenderSettings,
    TlsSettings,
)
from scp._spool import Spool, SpooledStudy, StoredInstance
from scp._study import CompletionMonitor
from scp.errors import (
    InvalidInstanceError,
    MalformedDatasetError,
    ProtocolError,
    ScpError,
    SendError,
    SpoolFullError,
)

__all__ = [
    "ACCEPTED_TRANSFER_SYNTAXES",
    "AssociationPolicy",
    "CompletionMonitor",
    "CompletionSettings",
    "DestinationSettings",
    "InvalidInstanceError",
    "LogId",
    "MalformedDatasetError",
    "ProtocolError",
    "Rejection",
    "RetryBudget",
    "ScpError",
    "ScpSettings",
    "SendError",
    "SendReport",
    "SenderSettings",
    "Spool",
    "SpoolFullError",
    "SpooledStudy",
    "StorageSender",
    "StorageServer",
    "StoredInstance",
    "TlsSettings",
    "echo",
    "status",
]
