"""Config sections for the audit ledger and the metrics endpoint."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from node.config.atna import AtnaSection
from node.config.base import FrozenModel, Port

__all__ = ["AuditSection", "MetricsSection"]


class AuditSection(FrozenModel):
    """Tamper-evident audit ledger (docs/audit.md)."""

    enabled: bool = True
    ledger: Path | None = Field(default=None, description="default: <state_dir>/audit/ledger.jsonl")
    key_file: Path | None = Field(
        default=None, description="Ed25519 signing key, default: <key_dir>/audit_ed25519.key"
    )
    fsync: bool = Field(default=True, description="fsync every entry before append() returns")
    anchor_dir: Path | None = Field(
        default=None,
        description="where the signed head is anchored, outside the ledger's directory"
        " (<anchor_dir>/<ledger file name>.anchor); default: <key_dir>, next to the signing key",
    )
    atna: AtnaSection = Field(
        default=AtnaSection(), description="ATNA export over syslog (docs/atna.md); off by default"
    )


class MetricsSection(FrozenModel):
    """The node's HTTP server: ``/metrics``, ``/healthz`` and, with ``console.enabled``,
    ``/api/v1`` and ``/console``; plain HTTP unless ``tls_cert`` and ``tls_key`` are set."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: Port = Field(default=9464)
    tls_cert: Path | None = Field(default=None, description="PEM certificate (chain) for HTTPS")
    tls_key: Path | None = Field(default=None, description="its private key (mode 0600)")
