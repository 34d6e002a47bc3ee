"""Metrics: scraped over loopback, fixed label sets only, /healthz answers 200/503."""

from __future__ import annotations

import socket

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from node import __version__
from node.config.observability import MetricsSection
from node.metrics import (
    DIRECTIONS,
    JOB_STATES,
    REFUSALS,
    REJECT_REASONS,
    RULE_ACTIONS,
    SR_OUTCOMES,
    STEPS,
    MetricsServer,
    NodeMetrics,
    serve_metrics,
)
from tests.support.peers import free_port

ALLOWED = {"reason": REJECT_REASONS | REFUSALS, "state": JOB_STATES, "step": STEPS,
           "direction": DIRECTIONS, "outcome": SR_OUTCOMES, "action": RULE_ACTIONS}


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = httpx.get(url + "/metrics", timeout=5)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_scrape_over_loopback_reflects_events() -> None:
    m = NodeMetrics()
    m.instance_received(10)
    m.instance_refused("spool_full")
    m.association_rejected("calling_ae")
    m.association_rejected("calling_ae")
    m.study_completed()
    m.rule_decision("infer")
    m.set_jobs({"queued": 3, "running": 1})
    m.observe_step("vendor", 1.7)
    with m.time_step("deid"):
        pass
    m.vendor_traffic(sent=5_000_000, received=250_000)
    m.retry("deliver")
    m.sr_delivered(True)
    m.sr_delivered(False)
    with MetricsServer(m.registry, "127.0.0.1", 0) as server:
        v = scrape(server.url)
    assert v[("blindread_instances_received_total", ())] == 10
    assert v[("blindread_instances_refused_total", (("reason", "spool_full"),))] == 1
    assert v[("blindread_instances_refused_total", (("reason", "undecodable"),))] == 0
    assert v[("blindread_associations_rejected_total", (("reason", "calling_ae"),))] == 2
    assert v[("blindread_associations_rejected_total", (("reason", "tls"),))] == 0  # pre-created
    assert v[("blindread_studies_completed_total", ())] == 1
    assert v[("blindread_rule_decisions_total", (("action", "infer"),))] == 1
    assert v[("blindread_jobs", (("state", "queued"),))] == 3
    assert v[("blindread_jobs", (("state", "failed"),))] == 0
    assert v[("blindread_step_seconds_count", (("step", "vendor"),))] == 1
    assert v[("blindread_step_seconds_sum", (("step", "vendor"),))] == pytest.approx(1.7)
    assert v[("blindread_step_seconds_bucket", (("le", "2.5"), ("step", "vendor")))] == 1
    assert v[("blindread_step_seconds_bucket", (("le", "1.0"), ("step", "vendor")))] == 0
    assert v[("blindread_step_seconds_count", (("step", "deid"),))] == 1
    assert v[("blindread_vendor_bytes_total", (("direction", "sent"),))] == 5_000_000
    assert v[("blindread_vendor_bytes_total", (("direction", "received"),))] == 250_000
    assert v[("blindread_retries_total", (("step", "deliver"),))] == 1
    assert v[("blindread_sr_deliveries_total", (("outcome", "failure"),))] == 1
    # every label value in the exposition comes from a fixed set
    for (_, labels) in v:
        for key, value in labels:
            if key in ALLOWED:
                assert value in ALLOWED[key]
            else:
                assert key in ("le", "version")


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.association_rejected("PATIENT^NAME"),
        lambda m: m.observe_step("1.2.840.99.1", 1.0),
        lambda m: m.set_jobs({"st-0123": 1}),
        lambda m: m.retry("nope"),
        lambda m: m.rule_decision("chest-rule"),
        lambda m: m.vendor_traffic(sent=-1),
    ],
)
def test_free_text_labels_refused(call: object) -> None:
    m = NodeMetrics()
    with pytest.raises(ValueError):
        call(m)  # type: ignore[operator]


def test_time_step_records_failures_too() -> None:
    m = NodeMetrics()
    with pytest.raises(RuntimeError), m.time_step("vendor"):
        raise RuntimeError("vendor down")
    assert m.registry.get_sample_value("blindread_step_seconds_count", {"step": "vendor"}) == 1


def test_healthz_and_routing() -> None:
    state = {"spool_writable": True, "job_store_open": True}
    with MetricsServer(NodeMetrics().registry, "127.0.0.1", 0, lambda: state) as server:
        r = httpx.get(server.url + "/healthz", timeout=5)
        assert r.status_code == 200
        assert r.json() == {"status": "ok", "checks": state}
        state["spool_writable"] = False
        r = httpx.get(server.url + "/healthz", timeout=5)
        assert r.status_code == 503 and r.json()["status"] == "unhealthy"
        assert httpx.get(server.url + "/", timeout=5).status_code == 404
        assert httpx.post(server.url + "/metrics", timeout=5).status_code == 405


def test_broken_health_check_is_unhealthy_not_a_crash() -> None:
    def boom() -> dict[str, bool]:
        raise OSError("disk gone")

    with MetricsServer(NodeMetrics().registry, "127.0.0.1", 0, boom) as server:
        r = httpx.get(server.url + "/healthz", timeout=5)
        assert r.status_code == 503
        assert r.json()["checks"] == {"health_check_ran": False}
        assert httpx.get(server.url + "/metrics", timeout=5).status_code == 200


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        server = MetricsServer(NodeMetrics().registry, "::1", 0).start()
    except OSError:
        pytest.skip("::1 not configured")
    try:
        assert httpx.get(server.url + "/healthz", timeout=5).status_code == 200
    finally:
        server.stop()


def test_serve_from_config() -> None:
    m = NodeMetrics()
    assert serve_metrics(MetricsSection(), m) is None  # disabled by default
    port = free_port()
    server = serve_metrics(MetricsSection(enabled=True, host="127.0.0.1", port=port), m)
    assert server is not None
    try:
        assert server.port == port
        assert ("blindread_build_info", (("version", __version__),)) in scrape(server.url)
    finally:
        server.stop()
    busy = socket.socket()  # the port is free again after stop(); occupy it
    busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # client conns in TIME_WAIT
    busy.bind(("127.0.0.1", port))
    busy.listen()
    try:
        with pytest.raises(OSError):  # a busy port fails at start, not silently later
            MetricsServer(m.registry, "127.0.0.1", port).start()
    finally:
        busy.close()


def test_association_refusals_counted_by_reason() -> None:
    """The SCP's A-ASSOCIATE-RJ / accept-time reason codes land on the metric's fixed labels
    (0x02 is the per-address connection limit at accept: 'busy')."""
    from node.service import IngestEvents

    m = NodeMetrics()
    events = IngestEvents(monitor=None, metrics=m)  # type: ignore[arg-type]
    for code in (0x01, 0x02, 0x02, 0x03, 0x07, 0x55):
        events.rejected(code)
    got = {
        reason: m.registry.get_sample_value(
            "blindread_associations_rejected_total", {"reason": reason}
        )
        for reason in ("network", "busy", "calling_ae", "called_ae", "other")
    }
    assert got == {"network": 1, "busy": 2, "calling_ae": 1, "called_ae": 1, "other": 1}
