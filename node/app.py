"""Composition root of a running hospital node: service + pipeline + audit + metrics.

``build_node(cfg)`` wires what the config asks for; ``blindread node run`` and the demo call it.
Everything it opens is closed by :meth:`Node.stop`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from node.audit import AuditLedger, open_ledger
from node.config import NodeConfig
from node.deid import DeidKeys
from node.keys import load_or_create_secret
from node.metrics import MetricsServer, NodeMetrics, serve_metrics
from node.netsettings import sender_settings
from node.pipeline import Pipeline
from node.pseudonym import Pseudonymizer
from node.service import NodeService, node_paths
from node.vault import IdentifierVault
from node.vendors import VendorBackends
from scp import StorageSender

__all__ = ["Node", "build_node"]

log = logging.getLogger(__name__)


@dataclass
class Node:
    """A node with everything it needs; ``start``/``stop`` in the right order."""

    cfg: NodeConfig
    service: NodeService
    pipeline: Pipeline
    vault: IdentifierVault
    vendors: VendorBackends
    audit: AuditLedger | None
    metrics: NodeMetrics
    metrics_server: MetricsServer | None = None
    warm_up: threading.Thread | None = None

    def _serve_metrics(self) -> MetricsServer | None:
        spool = self.service.spool

        def health() -> dict[str, bool]:
            return {
                "job_runner_alive": self.service.runner_alive(),
                "spool_above_watermark": spool.free_bytes() >= self.cfg.scp.min_free_bytes,
            }

        return serve_metrics(self.cfg.metrics, self.metrics, health, self.service.refresh_metrics)

    def _warm_up(self) -> None:
        pairs = [
            (r.action.infer.vendor, r.action.infer.model)
            for r in self.cfg.routes
            if r.action.infer is not None and r.enabled
        ]
        if pairs:
            self.warm_up = self.vendors.warm_up(pairs)

    def start(self) -> None:
        self.metrics_server = self._serve_metrics()
        self.service.start()
        self._warm_up()

    def stop(self) -> None:
        self.service.stop()
        self._close()

    def _close(self) -> None:
        """Close what the node opened besides the service (after the service stopped)."""
        if self.metrics_server is not None:
            self.metrics_server.stop()
        self.vendors.close()
        self.vault.close()

    def run_forever(self) -> None:
        """Foreground run until SIGTERM/SIGINT (systemd)."""
        self.metrics_server = self._serve_metrics()
        self._warm_up()
        try:
            self.service.run_forever()
        finally:
            self._close()


def build_node(cfg: NodeConfig) -> Node:
    """The node for ``cfg``: every completed study's job runs the pipeline (with no routing
    rule, nothing matches and the study is left alone)."""
    keys = cfg.node.keys
    metrics = NodeMetrics()
    audit = open_ledger(cfg)
    vault = IdentifierVault.open(cfg.node.state_dir, keys)
    vendors = VendorBackends(cfg)
    # the pseudonym key is the service's too (load_or_create is idempotent)
    uid_key = load_or_create_secret(node_paths(cfg).pseudonym_key)
    pipeline = Pipeline(
        cfg,
        pseudonyms=Pseudonymizer(uid_key),
        deid_keys=DeidKeys.load_or_create(keys),
        vault=vault,
        sender=StorageSender(sender_settings(cfg)),
        backends=vendors,
        uid_key=uid_key,
        audit=audit,
        metrics=metrics,
    )
    service = NodeService(cfg, pipeline, metrics=metrics)
    pipeline.jobs = service.store  # earlier jobs of a study (late images), see Pipeline
    return Node(cfg, service, pipeline, vault, vendors, audit, metrics)
