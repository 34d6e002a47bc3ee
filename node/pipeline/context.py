"""What every pipeline step may use: the node's config and the collaborators it was built with."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from node.audit import AuditLedger
from node.config import NodeConfig
from node.deid import DeidKeys
from node.metrics import NodeMetrics
from node.vault import IdentifierVault
from scp import StorageSender

__all__ = ["StepContext"]


@dataclass(frozen=True)
class StepContext:
    """The parts a step needs, built once by :func:`node.app.build_node`."""

    cfg: NodeConfig
    deid_keys: DeidKeys
    vault: IdentifierVault
    sender: StorageSender
    uid_key: bytes
    metrics: NodeMetrics
    audit: AuditLedger | None = None

    def record(self, kind: str, **details: Any) -> None:
        """An audit entry (pseudonyms and hashes only), if the node keeps a ledger."""
        if self.audit is not None:
            self.audit.append(kind, details)

    def timed(self, step: str) -> AbstractContextManager[None]:
        """Measure ``step``'s latency into the metrics."""
        return self.metrics.time_step(step)
