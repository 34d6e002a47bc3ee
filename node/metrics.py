"""Prometheus metrics of the hospital node and the small HTTP server exposing them.

Metrics live in their own :class:`prometheus_client.CollectorRegistry` (not the global one), so
tests and several nodes in one process do not share counters. Labels take values only from the
fixed sets below (:data:`REJECT_REASONS`, :data:`JOB_STATES`, :data:`STEPS`, ...); anything else
raises ``ValueError``, which keeps identifiers (and unbounded cardinality) out of labels.

The server is the standard library's WSGI server with prometheus_client's WSGI app for
``/metrics`` plus a ``/healthz`` route; prometheus_client's own ``start_http_server`` serves the
metrics on every path and has no health route, hence the few lines of dispatch here.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from socketserver import ThreadingMixIn
from types import TracebackType
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    make_wsgi_app,
)

from node import __version__
from node.config.observability import MetricsSection

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

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

HealthCheck = Callable[[], Mapping[str, bool]]
"""Returns named checks (fixed names such as ``spool_writable``) and whether each passes."""


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


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _ThreadingServer6(_ThreadingServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would flood stderr; access logs add nothing here."""


class MetricsServer:
    """HTTP server for ``GET /metrics`` (Prometheus text format) and ``GET /healthz`` (JSON).

    ``/healthz`` answers 200 ``{"status": "ok", "checks": {...}}`` when every check passes and
    503 ``{"status": "unhealthy", ...}`` otherwise. ``port=0`` picks a free port (see
    :attr:`port`). Use as a context manager or call :meth:`start`/:meth:`stop`.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str = "127.0.0.1",
        port: int = 9464,
        health: HealthCheck | None = None,
        refresh: Callable[[], None] | None = None,
    ) -> None:
        self._metrics_app = make_wsgi_app(registry)
        self._health = health
        self._refresh = refresh
        self._host = host
        self._requested_port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("server not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    def _app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return _respond(start_response, "405 Method Not Allowed", {"error": "GET only"})
        if path == "/metrics":
            if self._refresh is not None:
                try:
                    self._refresh()  # e.g. jobs by state, read from the job store itself
                except Exception as exc:  # stale gauges beat a failed scrape
                    log.warning("metrics refresh failed: %s", type(exc).__name__)
            return self._metrics_app(environ, start_response)
        if path == "/healthz":
            checks: dict[str, bool] = {}
            try:
                checks = {str(k): bool(v) for k, v in (self._health or dict)().items()}
                ok = all(checks.values())
            except Exception:  # a broken check means unhealthy, not a crashed endpoint
                ok = False
                checks["health_check_ran"] = False
            status = "200 OK" if ok else "503 Service Unavailable"
            body = {"status": "ok" if ok else "unhealthy", "checks": checks}
            return _respond(start_response, status, body)
        return _respond(start_response, "404 Not Found", {"error": "try /metrics or /healthz"})

    def start(self) -> MetricsServer:
        cls = _ThreadingServer6 if ":" in self._host else _ThreadingServer
        self._server = make_server(self._host, self._requested_port, self._app,
                                   server_class=cls, handler_class=_QuietHandler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="metrics-http", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

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
) -> MetricsServer | None:
    """Start the endpoint configured in ``metrics:`` (``None`` when it is disabled)."""
    if not section.enabled:
        return None
    return MetricsServer(metrics.registry, section.host, section.port, health, refresh).start()


def _respond(start_response: StartResponse, status: str, body: Mapping[str, Any]) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(data)))])
    return [data]
