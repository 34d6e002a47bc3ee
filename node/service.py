"""The running node: Storage SCP + study completion + job runner, with ordered start/stop.

Start order matters for crash safety: the job store recovers half-done claims and moves
*before* the SCP accepts anything, then completion timers are re-seeded from the spool.
Stop order: refuse new associations, let running ones finish briefly (every acknowledged
instance is already durable), stop timers, then let the current job finish or be resumed later.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from node.config import NodeConfig
from node.intake import Intake
from node.jobs import JobStore
from node.keys import load_or_create_secret
from node.metrics import NodeMetrics
from node.netsettings import (
    completion_settings,
    scp_settings,
    sender_settings,
)
from node.pseudonym import Pseudonymizer
from node.runner import JobAction, JobRunner
from scp import CompletionMonitor, Spool, StorageServer, status

__all__ = ["NodePaths", "NodeService", "node_paths", "open_jobs"]

# A-ASSOCIATE-RJ reason codes our policy sends -> the metric's fixed reason labels
_REJECT_REASONS = {0x01: "network", 0x03: "calling_ae", 0x07: "called_ae"}
_REFUSALS = {
    status.OUT_OF_RESOURCES: "spool_full",
    status.CANNOT_DECODE: "undecodable",
    status.MISSING_STUDY_UID: "missing_uid",
    status.MISSING_SERIES_UID: "missing_uid",
    status.MISSING_SOP_UID: "missing_uid",
    status.SPOOL_WRITE_FAILED: "write_failed",
}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodePaths:
    """Where the node keeps its state."""

    spool: Path
    jobs_db: Path
    jobs_dir: Path
    quarantine: Path
    pseudonym_key: Path


def node_paths(cfg: NodeConfig) -> NodePaths:
    state = cfg.node.state_dir
    return NodePaths(
        spool=cfg.spool_dir,
        jobs_db=state / "jobs.sqlite",
        jobs_dir=state / "jobs",
        quarantine=state / "quarantine",
        pseudonym_key=cfg.node.keys / "pseudonym.key",
    )


def open_jobs(cfg: NodeConfig) -> tuple[JobStore, Intake]:
    """Job store and intake of ``cfg``'s node (also used by ``blindread jobs``)."""
    paths = node_paths(cfg)
    key = load_or_create_secret(paths.pseudonym_key)
    spool = Spool(paths.spool, Pseudonymizer(key).study, fsync=cfg.scp.fsync)
    store = JobStore(paths.jobs_db)
    return store, Intake(spool, store, paths.jobs_dir, paths.quarantine)


class NodeService:
    """Composes the node's long-running parts; ``action`` is what a completed study's job does
    (the pipeline of :mod:`node.pipeline` in production, see :func:`node.app.build_node`)."""

    def __init__(
        self,
        cfg: NodeConfig,
        action: JobAction,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self.cfg = cfg
        self.paths = node_paths(cfg)
        self.key = load_or_create_secret(self.paths.pseudonym_key)
        self.pseudonyms = Pseudonymizer(self.key)
        settings = scp_settings(cfg)
        self.spool = Spool(
            settings.spool_dir,
            self.pseudonyms.study,
            fsync=settings.fsync,
            min_free_bytes=settings.min_free_bytes,
        )
        self.store = JobStore(self.paths.jobs_db)
        self.intake = Intake(self.spool, self.store, self.paths.jobs_dir, self.paths.quarantine)
        self.runner = JobRunner(
            self.store,
            self.intake,
            action,
            sender_settings(cfg),
            housekeeping=lambda: self.intake.purge_done(
                cfg.node.keep_finished_jobs_days * 86400.0
            ),
        )
        self.monitor = CompletionMonitor(completion_settings(cfg), self._complete)
        self.metrics = metrics
        self.server = StorageServer(
            settings,
            self.spool,
            self.pseudonyms.study,
            self._stored,
            on_rejected=self._rejected,
            on_refused=self._refused,
        )
        self._stopped = threading.Event()

    def _stored(self, study_key: str) -> None:
        if self.metrics is not None:
            self.metrics.instance_received()
        self.monitor.touch(study_key)

    def _rejected(self, reason_code: int) -> None:
        if self.metrics is not None:
            self.metrics.association_rejected(_REJECT_REASONS.get(reason_code, "other"))

    def _refused(self, code: int) -> None:
        if self.metrics is not None:
            self.metrics.instance_refused(_REFUSALS.get(code, "other"))

    def _complete(self, study_key: str) -> None:
        if self.intake.claim(study_key) is not None:
            if self.metrics is not None:
                self.metrics.study_completed()
            self.runner.wake()

    def refresh_metrics(self) -> None:
        """Jobs by state, counted in the job store (called on every metrics scrape)."""
        if self.metrics is not None:
            counts = {state: 0 for state in ("queued", "running", "done", "failed")}
            for job in self.store.list():
                if job.state in counts:
                    counts[job.state] += 1
            self.metrics.set_jobs(counts)

    @property
    def port(self) -> int:
        return self.server.port

    def start(self) -> None:
        self.intake.recover()
        self.monitor.seed(self.spool.studies())
        self.server.start()
        self.monitor.start()
        self.runner.start()
        log.info("node %s running", self.cfg.node.name)

    def stop(self, timeout: float = 9.0) -> None:
        """Stop within ``timeout`` seconds; acknowledged data is already durable."""
        self.server.stop(grace=timeout * 0.4)
        self.monitor.stop(timeout * 0.1)
        self.runner.stop(timeout * 0.4)
        if not self.runner_alive():  # else the daemon thread may still use it
            self.store.close()
        self._stopped.set()
        log.info("node %s stopped", self.cfg.node.name)

    def runner_alive(self) -> bool:
        t = self.runner._thread
        return t is not None and t.is_alive()

    def run_forever(self) -> None:
        """Run until SIGTERM/SIGINT, then stop cleanly (systemd's stop, Ctrl-C)."""
        stop = threading.Event()

        def _on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("signal %d received, stopping", signum)
            stop.set()

        old = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            stop.wait()
        finally:
            self.stop()
            for s, h in old.items():
                signal.signal(s, h)
