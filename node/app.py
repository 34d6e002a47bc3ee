"""Composition root of a hospital node: every part is built here, once, and handed in.

``build_node(cfg)`` wires what the config asks for (service + pipeline + audit + metrics);
``blindread node run`` and the demo call it. ``build_service`` is the same service with another
job action (tests, the ingest benchmark), and ``open_jobs`` the job store and intake alone
(``blindread jobs``); all three share :func:`open_state`, so the pseudonym key is read in one
place and every part that names studies uses the same :class:`~node.pseudonym.Pseudonymizer`.
Everything :func:`build_node` opens is closed by :meth:`Node.stop`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from starlette.routing import BaseRoute

from node.audit import AuditLedger, open_ledger
from node.config import NodeConfig
from node.deid import DeidKeys
from node.health import Prober
from node.intake import Intake
from node.jobs import JobStore
from node.keys import load_or_create_secret
from node.metrics import MetricsServer, NodeMetrics, serve_metrics
from node.netsettings import completion_settings, scp_settings, sender_settings
from node.pauses import Pauses
from node.pipeline import Pipeline
from node.pseudonym import Pseudonymizer
from node.runner import JobAction, JobRunner
from node.service import IngestEvents, NodePaths, NodeService, StudyCompletion
from node.vault import IdentifierVault
from node.vendors import VendorBackends
from scp import CompletionMonitor, ScpSettings, SenderSettings, Spool, StorageSender, StorageServer

__all__ = [
    "Node",
    "NodeState",
    "build_node",
    "build_service",
    "http_routes",
    "node_paths",
    "open_jobs",
    "open_state",
    "pauses_of",
]

log = logging.getLogger(__name__)


def node_paths(cfg: NodeConfig) -> NodePaths:
    """Where ``cfg``'s node keeps its state."""
    state = cfg.node.state_dir
    return NodePaths(
        spool=cfg.spool_dir,
        jobs_db=state / "jobs.sqlite",
        jobs_dir=state / "jobs",
        quarantine=state / "quarantine",
        pseudonym_key=cfg.node.keys / "pseudonym.key",
    )


@dataclass(frozen=True)
class NodeState:
    """The node's durable state, opened once: pseudonym key, spool, job store and intake."""

    paths: NodePaths
    scp: ScpSettings
    pseudonym_key: bytes
    pseudonyms: Pseudonymizer
    spool: Spool
    store: JobStore
    intake: Intake


def open_state(cfg: NodeConfig) -> NodeState:
    """Open (creating on first use) the pseudonym key, spool, job store and intake of ``cfg``."""
    paths = node_paths(cfg)
    settings = scp_settings(cfg)
    key = load_or_create_secret(paths.pseudonym_key)
    pseudonyms = Pseudonymizer(key)
    spool = Spool(
        settings.spool_dir,
        pseudonyms.study,
        fsync=settings.fsync,
        min_free_bytes=settings.min_free_bytes,
    )
    store = JobStore(paths.jobs_db)
    intake = Intake(spool, store, paths.jobs_dir, paths.quarantine)
    return NodeState(paths, settings, key, pseudonyms, spool, store, intake)


def open_jobs(cfg: NodeConfig) -> tuple[JobStore, Intake]:
    """Job store and intake of ``cfg``'s node (``blindread jobs``); the caller closes the
    store."""
    state = open_state(cfg)
    return state.store, state.intake


def build_service(
    cfg: NodeConfig,
    action: JobAction,
    *,
    state: NodeState | None = None,
    retry: SenderSettings | None = None,
    metrics: NodeMetrics | None = None,
    prober: Prober | None = None,
) -> NodeService:
    """The node's service running ``action`` for every completed study.

    ``state`` and ``retry`` (the runner's backoff) are built from ``cfg`` unless the caller
    already holds them (:func:`build_node` shares them with the pipeline); ``prober`` (vendor
    and destination reachability for ``/healthz``) is started and stopped with the service.
    """
    state = state if state is not None else open_state(cfg)
    retry = retry if retry is not None else sender_settings(cfg)
    intake = state.intake
    keep_seconds = cfg.node.keep_finished_jobs_days * 86400.0
    runner = JobRunner(
        state.store,
        intake,
        action,
        retry,
        housekeeping=lambda: intake.purge_done(keep_seconds),
        workers=cfg.node.workers,
        metrics=metrics,
    )
    monitor = CompletionMonitor(
        completion_settings(cfg), StudyCompletion(intake, runner, metrics)
    )
    events = IngestEvents(monitor, metrics)
    server = StorageServer(
        state.scp,
        state.spool,
        state.pseudonyms.study,
        events.stored,
        on_rejected=events.rejected,
        on_refused=events.refused,
    )
    return NodeService(
        cfg,
        paths=state.paths,
        pseudonyms=state.pseudonyms,
        spool=state.spool,
        store=state.store,
        intake=intake,
        runner=runner,
        monitor=monitor,
        server=server,
        metrics=metrics,
        prober=prober,
    )


def pauses_of(cfg: NodeConfig) -> Pauses:
    """The destinations and vendors an operator paused (``<state_dir>/paused.json``)."""
    return Pauses(cfg.node.state_dir / "paused.json")


def http_routes(
    cfg: NodeConfig,
    service: NodeService,
    metrics: NodeMetrics,
    pauses: Pauses,
    audit: AuditLedger | None = None,
) -> list[BaseRoute]:
    """The REST API and console routes for the node's HTTP server (none unless
    ``console.enabled``)."""
    if not cfg.console.enabled:
        return []
    from node.api import Guard, Operations, api_routes
    from node.api.auth import Sessions
    from node.console import console_routes

    ops = Operations(cfg, service, pauses, metrics, service.prober, audit)
    guard = Guard(cfg.console.users, Sessions(cfg.console.session_hours * 3600))
    secure = cfg.metrics.tls_cert is not None
    return [*api_routes(ops, guard), *console_routes(ops, guard, secure_cookies=secure)]


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
    routes: list[BaseRoute]
    metrics_server: MetricsServer | None = None
    warm_up: threading.Thread | None = None

    def _serve_metrics(self) -> MetricsServer | None:
        return serve_metrics(
            self.cfg.metrics,
            self.metrics,
            self.service.health,
            self.service.refresh_metrics,
            self.routes,
        )

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
    audit = open_ledger(cfg, metrics.registry)
    vault = IdentifierVault.open(cfg.node.state_dir, keys)
    pauses = pauses_of(cfg)
    vendors = VendorBackends(cfg, metrics=metrics, pauses=pauses)
    prober = Prober(cfg, keys / "ckks", cfg.health.probe_seconds)
    state = open_state(cfg)
    retry = sender_settings(cfg)
    pipeline = Pipeline(
        cfg,
        pseudonyms=state.pseudonyms,
        deid_keys=DeidKeys.load_or_create(keys),
        vault=vault,
        sender=StorageSender(retry),
        backends=vendors,
        uid_key=state.pseudonym_key,
        jobs=state.store,  # earlier jobs of a study (late images), see Pipeline
        audit=audit,
        metrics=metrics,
        pauses=pauses,
    )
    service = build_service(
        cfg, pipeline, state=state, retry=retry, metrics=metrics, prober=prober
    )
    routes = http_routes(cfg, service, metrics, pauses, audit)
    return Node(cfg, service, pipeline, vault, vendors, audit, metrics, routes)
