"""Prometheus metrics of the hospital node and the small HTTP server exposing them.

Metrics live in their own :class:`prometheus_client.CollectorRegistry` (not the global one), so
tests and several nodes in one process do not share counters. Labels take values only from the
fixed sets below (:data:`REJECT_REASONS`, :data:`JOB_STATES`, :data:`STEPS`, ...); anything else
raises ``ValueError``, which keeps identifiers (and unbounded cardinality) out of labels.

The server is a small Starlette app under uvicorn (in a thread): prometheus_client's ASGI app
for ``/metrics``, a ``/healthz`` route, and whatever other routes the composition root mounts
(the REST API and console of :mod:`node.api` and :mod:`node.console`); prometheus_client's own
``start_http_server`` serves the metrics on every path and has no other routes. HTTPS when a
certificate and key are given.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Protocol

import uvicorn
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from node import __version__
from node.config.observability import MetricsSection

log = logging.getLogger(__name__)

__all__ = [
    "DIRECTIONS",
    "JOB_STATES",
    "REFUSALS",
    "REJECT_REASONS",
    "RULE_ACTIONS",
    "SR_OUTCOMES",
    "STEPS",
    "HealthCheck",
    "MetricsServer",
    "NodeMetrics",
    "serve_metrics",
]

REJECT_REASONS = frozenset(
    {"calling_ae", "called_ae", "network", "tls", "no_presentation_context", "busy", "other"}
)
"""Why an association was rejected."""

REFUSALS = frozenset({"spool_full", "undecodable", "missing_uid", "write_failed", "other"})
"""Why the Storage SCP refused an instance (0xA700, 0xC001, 0xC002-0xC004, 0xC005)."""

JOB_STATES = frozenset({"claiming", "queued", "running", "done", "failed"})
"""States of a job in the job store (``node.jobs.STATES``; a job waiting to retry is queued)."""

STEPS = frozenset(
    {"receive", "completion", "rules", "deid", "preprocess", "encrypt", "vendor", "decrypt",
     "sr_build", "deliver", "forward", "total"}
)  # fmt: skip
"""Pipeline steps whose latency is measured (and which may be retried)."""

DIRECTIONS = frozenset({"sent", "received"})
"""Direction of bytes exchanged with a vendor peer."""

SR_OUTCOMES = frozenset({"success", "failure"})
"""Outcome of one SR C-STORE to a destination."""

RULE_ACTIONS = frozenset({"infer", "forward_deidentified", "discard", "none"})
"""What the routing rules decided for a study (``none``: no rule matched)."""

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

class _Report(Protocol):
    """A health report with severities and reasons (:class:`node.health.HealthReport`)."""

    @property
    def status(self) -> str: ...

    def as_json(self) -> dict[str, object]: ...


HealthCheck = Callable[[], "Mapping[str, bool] | _Report"]
"""Returns named checks (fixed names such as ``spool_writable``) and whether each passes, or a
report with ``status`` ``ok``/``degraded``/``unhealthy`` and reasons."""


def _check(value: str, allowed: frozenset[str], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(sorted(allowed))}")
    return value


class NodeMetrics:
    """Every metric the node exports, with methods that only accept fixed label values."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.instances_received = Counter(
            "blindread_instances_received", "DICOM instances accepted by the Storage SCP",
            registry=r)
        self.instances_refused = Counter(
            "blindread_instances_refused", "C-STOREs answered with a failure status",
            ["reason"], registry=r)
        self.associations_rejected = Counter(
            "blindread_associations_rejected", "Associations refused by policy",
            ["reason"], registry=r)
        self.studies_completed = Counter(
            "blindread_studies_completed", "Studies that reached the completion rule",
            registry=r)
        self.rule_decisions = Counter(
            "blindread_rule_decisions", "Actions chosen by the routing rules", ["action"],
            registry=r)
        self.jobs = Gauge("blindread_jobs", "Jobs in the job store by state", ["state"],
                          registry=r)
        # > 0 while the job store cannot record a finished attempt (full disk, locked database):
        # the store still says "running" then, so blindread_jobs alone does not show it
        self.jobs_unrecorded = Gauge(
            "blindread_job_states_unrecorded",
            "Finished job attempts whose new state the job store could not record yet",
            registry=r)
        self.step_seconds = Histogram(
            "blindread_step_seconds", "Latency of pipeline steps", ["step"],
            buckets=_LATENCY_BUCKETS, registry=r)
        self.vendor_bytes = Counter(
            "blindread_vendor_bytes", "Bytes exchanged with vendor peers (ciphertexts, context)",
            ["direction"], registry=r)
        self.retries = Counter("blindread_retries", "Retried pipeline steps", ["step"],
                               registry=r)
        self.sr_deliveries = Counter(
            "blindread_sr_deliveries", "Result SR C-STOREs to destinations", ["outcome"],
            registry=r)
        self.build = Info("blindread_build", "Version of this node", registry=r)
        self.build.info({"version": __version__})
        # Create every labelled series up front so dashboards and alerts see zeros, not gaps.
        for reason in REJECT_REASONS:
            self.associations_rejected.labels(reason)
        for refusal in REFUSALS:
            self.instances_refused.labels(refusal)
        for state in JOB_STATES:
            self.jobs.labels(state)
        for step in STEPS:
            self.step_seconds.labels(step)
            self.retries.labels(step)
        for direction in DIRECTIONS:
            self.vendor_bytes.labels(direction)
        for outcome in SR_OUTCOMES:
            self.sr_deliveries.labels(outcome)
        for action in RULE_ACTIONS:
            self.rule_decisions.labels(action)

    def instance_received(self, n: int = 1) -> None:
        self.instances_received.inc(n)

    def instance_refused(self, reason: str) -> None:
        self.instances_refused.labels(_check(reason, REFUSALS, "refusal")).inc()

    def association_rejected(self, reason: str) -> None:
        self.associations_rejected.labels(_check(reason, REJECT_REASONS, "reason")).inc()

    def study_completed(self) -> None:
        self.studies_completed.inc()

    def rule_decision(self, action: str) -> None:
        self.rule_decisions.labels(_check(action, RULE_ACTIONS, "action")).inc()

    def set_jobs(self, counts: Mapping[str, int]) -> None:
        """Set the job gauge from a full ``state -> count`` snapshot (missing states -> 0)."""
        for state in counts:
            _check(state, JOB_STATES, "job state")
        for state in JOB_STATES:
            self.jobs.labels(state).set(counts.get(state, 0))

    def set_unrecorded(self, n: int) -> None:
        self.jobs_unrecorded.set(n)

    def observe_step(self, step: str, seconds: float) -> None:
        self.step_seconds.labels(_check(step, STEPS, "step")).observe(seconds)

    @contextmanager
    def time_step(self, step: str) -> Iterator[None]:
        """Measure the enclosed block as one ``step`` latency (also when it raises)."""
        _check(step, STEPS, "step")
        start = time.perf_counter()
        try:
            yield
        finally:
            self.observe_step(step, time.perf_counter() - start)

    def vendor_traffic(self, sent: int = 0, received: int = 0) -> None:
        if sent < 0 or received < 0:
            raise ValueError("byte counts cannot be negative")
        self.vendor_bytes.labels("sent").inc(sent)
        self.vendor_bytes.labels("received").inc(received)

    def retry(self, step: str) -> None:
        self.retries.labels(_check(step, STEPS, "step")).inc()

    def sr_delivered(self, ok: bool = True) -> None:
        self.sr_deliveries.labels("success" if ok else "failure").inc()



class MetricsServer:
    """HTTP(S) server for ``GET /metrics`` (Prometheus text format), ``GET /healthz`` (JSON)
    and the ``routes`` given (REST API, console).

    ``/healthz`` answers 200 ``{"status": "ok", "checks": {...}}`` when every check passes,
    200 ``"degraded"`` with ``reasons`` when only degraded checks fail (the node works, some
    jobs wait) and 503 ``{"status": "unhealthy", ...}`` otherwise. ``port=0`` picks a free
    port (see :attr:`port`). Use as a context manager or call :meth:`start`/:meth:`stop`.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str = "127.0.0.1",
        port: int = 9464,
        health: HealthCheck | None = None,
        refresh: Callable[[], None] | None = None,
        routes: Sequence[BaseRoute] = (),
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self._registry = registry
        self._health = health
        self._refresh = refresh
        self._host = host
        self._requested_port = port
        self._tls = tls
        self.app = Starlette(routes=[
            Route("/metrics", self._metrics, methods=["GET", "HEAD"]),
            Route("/healthz", self._healthz, methods=["GET", "HEAD"]),
            *routes,
        ])  # fmt: skip
        self._server: uvicorn.Server | None = None
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._socket is None:
            raise RuntimeError("server not started")
        return int(self._socket.getsockname()[1])

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        scheme = "https" if self._tls else "http"
        return f"{scheme}://{host}:{self.port}"

    def _metrics(self, request: Request) -> Response:
        if self._refresh is not None:
            try:
                self._refresh()  # e.g. jobs by state, read from the job store itself
            except Exception as exc:  # stale gauges beat a failed scrape
                log.warning("metrics refresh failed: %s", type(exc).__name__)
        return Response(generate_latest(self._registry), media_type=CONTENT_TYPE_LATEST)

    def _healthz(self, request: Request) -> Response:
        try:
            got = (self._health or dict)()
            if isinstance(got, Mapping):
                checks = {str(k): bool(v) for k, v in got.items()}
                body: dict[str, object] = {
                    "status": "ok" if all(checks.values()) else "unhealthy", "checks": checks
                }
            else:
                body = got.as_json()
        except Exception as exc:  # a broken check means unhealthy, not a crashed endpoint
            log.warning("health check failed: %s", type(exc).__name__)
            body = {"status": "unhealthy", "checks": {"health_check_ran": False}}
        code = 503 if body["status"] == "unhealthy" else 200
        return JSONResponse(body, status_code=code)

    def start(self) -> MetricsServer:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self._host, self._requested_port))  # a busy port fails here, now
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,  # scrapes every few seconds would flood the log
            lifespan="off",
            ws="none",
            ssl_certfile=str(self._tls[0]) if self._tls else None,
            ssl_keyfile=str(self._tls[1]) if self._tls else None,
        )
        self._socket = sock
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="node-http", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise OSError(f"the HTTP server on {self._host}:{self._requested_port}"
                              " did not start (see the log)")  # fmt: skip
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._server = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve_metrics(
    section: MetricsSection,
    metrics: NodeMetrics,
    health: HealthCheck | None = None,
    refresh: Callable[[], None] | None = None,
    routes: Sequence[BaseRoute] = (),
) -> MetricsServer | None:
    """Start the endpoint configured in ``metrics:`` (``None`` when it is disabled)."""
    if not section.enabled:
        return None
    tls = (section.tls_cert, section.tls_key) if section.tls_cert and section.tls_key else None
    return MetricsServer(
        metrics.registry, section.host, section.port, health, refresh, routes, tls
    ).start()



