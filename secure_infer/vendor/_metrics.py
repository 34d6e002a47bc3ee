"""Prometheus metrics of the vendor peer (prometheus_client, a registry of its own).

Labels take only bounded values: the route template (never the raw path, which holds model
names and context hashes), the HTTP status, the byte direction, an error or refusal code; the
per-model series add the model name and version (bounded by the registry) and the hospital as
the first 12 hex digits of its keyed hash (:class:`secure_infer.vendor._identity.HospitalIds`:
bounded by the enrolled hospitals, and no name in the clear). Job tokens and context hashes stay
out of labels: they would make every request a new series.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from secure_infer.vendor._handshake import REASONS

__all__ = ["CONTENT_TYPE", "VendorMetrics", "VendorMetricsMiddleware"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class VendorMetrics:
    """Counters and histograms of one vendor server."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "blindread_vendor_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "blindread_vendor_request_seconds",
            "HTTP request latency by route",
            ["route"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.evaluate_seconds = Histogram(
            "blindread_vendor_evaluate_seconds",
            "Encrypted evaluation time per request",
            buckets=_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "blindread_vendor_queue_seconds",
            "Time a request waited for a worker",
            buckets=_BUCKETS,
            registry=r,
        )
        self.ciphertext_bytes = Counter(
            "blindread_vendor_ciphertext_bytes",
            "Ciphertext bytes received and returned",
            ["direction"],
            registry=r,
        )
        self.in_flight = Gauge(
            "blindread_vendor_jobs_in_flight", "Evaluations running or queued", registry=r
        )
        for direction in ("received", "sent"):
            self.ciphertext_bytes.labels(direction)
        self.tls_refused = Counter(
            "blindread_vendor_tls_refused",
            "TLS handshakes refused, by fixed reason (no_certificate, unknown_ca, expired, ...)",
            ["reason"],
            registry=r,
        )
        for reason in REASONS:
            self.tls_refused.labels(reason)

        # per model, version and (keyed) hospital
        mvh = ["model", "version", "hospital"]
        self.model_requests = Counter(
            "blindread_vendor_model_requests",
            "Inference requests by model, version, hospital (keyed hash) and outcome",
            [*mvh, "outcome"],
            registry=r,
        )
        self.model_seconds = Histogram(
            "blindread_vendor_model_seconds",
            "Inference latency in the server by model, version and hospital",
            mvh,
            buckets=_BUCKETS,
            registry=r,
        )
        self.model_bytes = Counter(
            "blindread_vendor_model_bytes",
            "Ciphertext bytes by model, version, hospital and direction",
            [*mvh, "direction"],
            registry=r,
        )
        self.model_errors = Counter(
            "blindread_vendor_model_errors",
            "Failed inference requests by model, version, hospital and error code",
            [*mvh, "code"],
            registry=r,
        )
        self.access_refused = Counter(
            "blindread_vendor_access_refused",
            "Requests refused by the access policy, by hospital and reason",
            ["hospital", "reason"],
            registry=r,
        )
        self.models_live = Gauge(
            "blindread_vendor_models_live", "Model versions served now", registry=r
        )
        self.models_refused = Gauge(
            "blindread_vendor_models_refused",
            "Manifests refused by the last registry (re)load (see the log for why)",
            registry=r,
        )
        self.registry_generation = Gauge(
            "blindread_vendor_registry_generation", "Registry loads so far", registry=r
        )

    def model_request(
        self, model: str, version: str, hospital: str, seconds: float, received: int, sent: int
    ) -> None:
        self.model_requests.labels(model, version, hospital, "ok").inc()
        self.model_seconds.labels(model, version, hospital).observe(seconds)
        self.model_bytes.labels(model, version, hospital, "received").inc(received)
        self.model_bytes.labels(model, version, hospital, "sent").inc(sent)

    def model_error(
        self, model: str, version: str, hospital: str, code: str, seconds: float
    ) -> None:
        self.model_requests.labels(model, version, hospital, "error").inc()
        self.model_errors.labels(model, version, hospital, code).inc()
        self.model_seconds.labels(model, version, hospital).observe(seconds)

    def refused(self, hospital: str, reason: str) -> None:
        self.access_refused.labels(hospital, reason).inc()

    def registry_loaded(self, registry: Any, refused: list[Any]) -> None:
        self.models_live.set(len(registry.models))
        self.models_refused.set(len(refused))
        self.registry_generation.set(registry.generation)

    def tls_refusal(self, reason: str) -> None:
        self.tls_refused.labels(reason).inc()

    def observe_infer(self, received: int, sent: int, evaluate_s: float, queue_s: float) -> None:
        self.ciphertext_bytes.labels("received").inc(received)
        self.ciphertext_bytes.labels("sent").inc(sent)
        self.evaluate_seconds.observe(evaluate_s)
        self.queue_seconds.observe(queue_s)

    def render(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE)


class VendorMetricsMiddleware:
    """Counts every HTTP request under its route template (``/v1/models/{name}/infer``)."""

    def __init__(self, app: ASGIApp, metrics: VendorMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = "unmatched"
        for candidate in scope["app"].routes if "app" in scope else ():
            if candidate.matches(scope)[0] == Match.FULL:
                route = getattr(candidate, "path", "unmatched")
                break
        status = {"code": 500}
        t0 = time.monotonic()

        async def send_wrapper(message: Any) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.requests.labels(route, str(status["code"])).inc()
            self.metrics.request_seconds.labels(route).observe(time.monotonic() - t0)


async def metrics_endpoint(request: Request) -> Response:
    """``GET /metrics`` (behind the same mutual TLS as everything else)."""
    srv = request.app.state.vendor
    srv.metrics.in_flight.set(srv.pool.in_flight)
    response: Response = srv.metrics.render()
    return response
