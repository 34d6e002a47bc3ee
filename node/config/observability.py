"""Config sections for the audit ledger and the metrics endpoint."""

from __future__ import annotations

from pydantic import Field

from node.config.base import FrozenModel, Port

__all__ = ["AuditSection", "MetricsSection"]


class AuditSection(FrozenModel):
    """Tamper-evident audit ledger."""

    enabled: bool = True


class MetricsSection(FrozenModel):
    """Prometheus endpoint."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: Port = Field(default=9464)
