"""Config section for the ATNA export of audit events (IHE ATNA, DICOM PS3.15 A.5, RFC 5424).

Off by default: with no ``destinations`` nothing is sent. Each destination is a syslog
receiver (the hospital's SIEM or a relay such as rsyslog) over UDP, TCP (RFC 6587 octet
counting) or TLS (RFC 5425).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from node.config.base import FrozenModel, Port

__all__ = ["AtnaDestination", "AtnaSection"]


class AtnaDestination(FrozenModel):
    """One syslog receiver of audit messages."""

    transport: Literal["udp", "tcp", "tls"]
    host: str = Field(min_length=1)
    port: Port
    ca: Path | None = Field(
        default=None, description="tls: CA bundle that verifies the receiver (required)"
    )
    cert: Path | None = Field(default=None, description="tls: our client certificate (optional)")
    key: Path | None = Field(default=None, description="tls: its private key")

    @model_validator(mode="after")
    def _tls_files(self) -> AtnaDestination:
        if self.transport == "tls" and self.ca is None:
            raise ValueError("transport tls needs 'ca' (the CA that verifies the receiver)")
        if self.transport != "tls" and (self.ca or self.cert or self.key):
            raise ValueError("ca/cert/key are only for transport tls")
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together")
        return self

    @property
    def label(self) -> str:
        """``transport://host:port``: the destination's name in metrics and logs."""
        return f"{self.transport}://{self.host}:{self.port}"


class AtnaSection(FrozenModel):
    """Audit events also sent as ATNA audit messages; never blocks the pipeline."""

    destinations: tuple[AtnaDestination, ...] = Field(
        default=(), description="syslog receivers; empty = no export (the default)"
    )
    audit_source_id: str = Field(
        default="blindread", min_length=1, description="AuditSourceID in every message"
    )
    queue_size: int = Field(
        default=1000, ge=1, description="messages waiting to be sent; beyond it they are dropped"
    )
    max_attempts: int = Field(default=3, ge=1, description="tries per message and destination")
    retry_seconds: float = Field(default=1.0, gt=0, description="wait between tries")
    timeout_seconds: float = Field(default=5.0, gt=0, description="connect/send timeout")
