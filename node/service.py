"""The running node: Storage SCP + study completion + job runner, with ordered start/stop.

:class:`NodeService` builds nothing: :mod:`node.app` builds the spool, job store, intake,
runner, completion monitor and server once and hands them in; this module owns only the order in
which they start and stop and what the SCP's and the monitor's callbacks do
(:class:`IngestEvents`, :class:`StudyCompletion`).

Start order matters for crash safety: the job store recovers half-done claims and moves
*before* the SCP accepts anything, then completion timers are re-seeded from the spool.
Stop order: refuse new associations, let running ones finish briefly (every acknowledged
instance is already durable), stop timers, then let the current job finish or be resumed later.
"""

from __future__ import annotations

import logging
import shutil
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from node.config import ConfigError, NodeConfig
from node.health import Check, HealthReport, Prober, certificate_checks
from node.intake import Intake
from node.jobs import JobStore
from node.latency import observe_claimed
from node.metrics import NodeMetrics
from node.pseudonym import Pseudonymizer
from node.runner import JobRunner
from scp import CompletionMonitor, Spool, StorageServer, status

__all__ = ["IngestEvents", "NodePaths", "NodeService", "StudyCompletion"]

# A-ASSOCIATE-RJ reason codes our policy sends -> the metric's fixed reason labels
# 0x02 = "temporary congestion": the per-address connection limit refused it at accept
_REJECT_REASONS = {0x01: "network", 0x02: "busy", 0x03: "calling_ae", 0x07: "called_ae"}
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


def _free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


class StudyCompletion:
    """What the completion monitor's callback does: claim the study's batch as a job and wake
    the runner."""

    def __init__(self, intake: Intake, runner: JobRunner, metrics: NodeMetrics | None) -> None:
        self.intake = intake
        self.runner = runner
        self.metrics = metrics

    def __call__(self, study_key: str) -> None:
        job = self.intake.claim(study_key)
        if job is not None:
            if self.metrics is not None:
                self.metrics.study_completed()
                observe_claimed(self.metrics, job)
            self.runner.wake()


class IngestEvents:
    """What the Storage SCP's callbacks do: count, and restart the study's completion timer."""

    def __init__(self, monitor: CompletionMonitor, metrics: NodeMetrics | None) -> None:
        self.monitor = monitor
        self.metrics = metrics

    def stored(self, study_key: str) -> None:
        if self.metrics is not None:
            self.metrics.instance_received()
        self.monitor.touch(study_key)

    def rejected(self, reason_code: int) -> None:
        if self.metrics is not None:
            self.metrics.association_rejected(_REJECT_REASONS.get(reason_code, "other"))

    def refused(self, code: int) -> None:
        if self.metrics is not None:
            self.metrics.instance_refused(_REFUSALS.get(code, "other"))


class NodeService:
    """The node's long-running parts, started and stopped in order.

    Every collaborator is built by :func:`node.app.build_service` (or
    :func:`node.app.build_node`); the runner's action is what a completed study's job does (the
    pipeline of :mod:`node.pipeline` in production).
    """

    def __init__(
        self,
        cfg: NodeConfig,
        *,
        paths: NodePaths,
        pseudonyms: Pseudonymizer,
        spool: Spool,
        store: JobStore,
        intake: Intake,
        runner: JobRunner,
        monitor: CompletionMonitor,
        server: StorageServer,
        metrics: NodeMetrics | None = None,
        prober: Prober | None = None,
    ) -> None:
        self.cfg = cfg
        self.prober = prober
        self.paths = paths
        self.pseudonyms = pseudonyms
        self.spool = spool
        self.store = store
        self.intake = intake
        self.runner = runner
        self.monitor = monitor
        self.server = server
        self.metrics = metrics
        self._stopped = threading.Event()

    def refresh_metrics(self) -> None:
        """Jobs by state, counted in the job store (called on every metrics scrape); a claim
        stuck half-way shows as ``claiming``; an attempt whose outcome the store could not record
        (full disk) as ``blindread_job_states_unrecorded``."""
        if self.metrics is not None:
            self.metrics.set_unrecorded(self.runner.unrecorded())
            self.metrics.set_jobs(self.store.counts())

    def health(self) -> HealthReport:
        """The node's ``/healthz`` checks (:mod:`node.health`).

        Critical: runner alive, no claim stuck in ``claiming``, every finished job's new state
        recorded (false while the job store cannot record it, e.g. on a full disk: the runner
        retries, see :mod:`node.runner`), and the spool's and the state directory's free space
        at or above ``scp.min_free_bytes`` (when the state directory's disk fills, the job
        store's updates fail). Degraded: the spool near that watermark, a job running longer
        than ``health.stuck_job_seconds``, a certificate missing or expiring, a vendor or
        destination unreachable (probed in the background by the :class:`Prober`)."""
        h = self.cfg.health
        watermark = self.cfg.scp.min_free_bytes
        spool_free = self.spool.free_bytes()
        state_free = _free_bytes(self.paths.jobs_dir)
        mb = 1_000_000
        checks = [
            Check("job_runner_alive", self.runner_alive(), True,
                  "the job runner's workers stopped: see the node's log, restart the node"),
            Check("spool_above_watermark", spool_free >= watermark, True,
                  f"spool free space {spool_free // mb} MB is below scp.min_free_bytes"
                  f" ({watermark // mb} MB): new images are refused; free disk space"),
            Check("state_dir_above_watermark", state_free >= watermark, True,
                  f"state directory free space {state_free // mb} MB is below"
                  f" scp.min_free_bytes ({watermark // mb} MB): free disk space"),
            Check("no_stuck_claims", self.intake.stuck_claims() == 0, True,
                  "a completed study could not be moved into a job (disk full or read-only?):"
                  " the runner retries; free space or fix permissions"),
            Check("job_states_recorded", self.runner.unrecorded() == 0, True,
                  "the job store cannot record finished jobs (disk full or database locked):"
                  " the runner retries; free space on the state directory"),
            Check("spool_not_near_watermark", spool_free >= watermark * h.spool_near_factor,
                  reason=f"spool free space {spool_free // mb} MB is within"
                  f" {h.spool_near_factor:g} x scp.min_free_bytes ({watermark // mb} MB):"
                  " images will be refused soon; free disk space or retry/purge jobs"),
        ]  # fmt: skip
        slow = [r for r in self.runner.running() if r.seconds() > h.stuck_job_seconds]
        checks.append(Check(
            "runner_not_stuck", not slow,
            reason="" if not slow else f"job {slow[0].job.id} has been running for"
            f" {slow[0].seconds() / 60:.0f} min (health.stuck_job_seconds ="
            f" {h.stuck_job_seconds:g}): see its vendor's and destination's health;"
            " restarting the node requeues it",
        ))  # fmt: skip
        checks += certificate_checks(self.cfg)
        if self.prober is not None:
            checks += self.prober.checks()
        return HealthReport(tuple(checks))

    def force_complete(self, study_key: str) -> bool:
        """Make ``study_key``'s batch in the spool a job now (an operator's force-complete)."""
        return self.monitor.complete_now(study_key)

    @property
    def port(self) -> int:
        return self.server.port

    def start(self) -> None:
        """Start in crash-safe order; refuses (:class:`~node.config.ConfigError`) a spool on
        another file system than the jobs directory, as ``blindread config check`` does."""
        problems = self.cfg.filesystem_problems()
        if problems:
            raise ConfigError("node start-up", problems)
        self.intake.recover()
        self.monitor.seed(self.spool.studies())
        self.server.start()
        self.monitor.start()
        self.runner.start()
        if self.prober is not None:
            self.prober.start()
        log.info("node %s running", self.cfg.node.name)

    def stop(self, timeout: float = 9.0) -> None:
        """Stop within ``timeout`` seconds; acknowledged data is already durable."""
        self.server.stop(grace=timeout * 0.4)
        self.monitor.stop(timeout * 0.1)
        self.runner.stop(timeout * 0.4)
        if self.prober is not None:
            self.prober.stop()
        if not self.runner_alive():  # else the daemon thread may still use it
            self.store.close()
        self._stopped.set()
        log.info("node %s stopped", self.cfg.node.name)

    def runner_alive(self) -> bool:
        return self.runner.alive()

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
