"""Issue #14: ``/healthz`` tells the truth. Before, it said ``ok`` while the vendor was down,
its client certificate missing, or a PACS unreachable."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from node.app import build_service
from node.health import Prober, certificate_checks
from node.metrics import MetricsServer, NodeMetrics
from secure_infer.vendor import certs
from tests.support.nodeutil import node_config
from tests.support.peers import free_port


def _cert(path: Path, days: float) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "short-lived")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _cfg(tmp_path: Path) -> object:
    certs.create_ca(tmp_path / "ca")
    pair = certs.issue_client_cert(tmp_path / "ca", tmp_path / "tls", "hospital-a")
    vendor = {"client_key": str(pair.key), "ca": str(tmp_path / "ca" / "ca.crt"), "models": ["m"]}
    return node_config(
        tmp_path,
        vendors={
            "down": {"url": f"https://127.0.0.1:{free_port()}", "client_cert": str(pair.cert),
                     **vendor},
            "nocert": {"url": f"https://127.0.0.1:{free_port()}",
                       "client_cert": str(tmp_path / "missing.crt"), **vendor},
            "soon": {"url": f"https://127.0.0.1:{free_port()}",
                     "client_cert": str(_cert(tmp_path / "soon.crt", 10)), **vendor},
        },
        destinations={"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": free_port()}},
    )  # fmt: skip


def test_certificates_missing_or_expiring_are_reported(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    found = {c.name: c for c in certificate_checks(cfg)}  # type: ignore[arg-type]
    assert found["vendor_down_client_cert"].ok and found["vendor_down_ca"].ok
    assert not found["vendor_nocert_client_cert"].ok
    assert "missing.crt is missing" in found["vendor_nocert_client_cert"].reason
    soon = found["vendor_soon_client_cert"]
    assert not soon.ok and "expires on" in soon.reason and "renew" in soon.reason


def test_healthz_degraded_with_reasons_when_peers_are_down(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    prober = Prober(cfg, tmp_path / "probe-keys")  # type: ignore[arg-type]
    svc = build_service(cfg, lambda job: None, prober=prober)  # type: ignore[arg-type]
    svc.start()  # the prober's first round runs in its thread; one more here, to be sure
    prober.probe_now()
    report = svc.health()
    body = report.as_json()
    assert report.status == "degraded", body
    reasons = body["reasons"]
    assert isinstance(reasons, dict)
    assert "vendor down at https://127.0.0.1:" in reasons["vendor_down_reachable"]
    assert "unreachable" in reasons["vendor_down_reachable"]
    assert "C-ECHO" in reasons["destination_pacs_reachable"]
    assert "vendor_nocert_client_cert" in reasons
    with MetricsServer(NodeMetrics().registry, "127.0.0.1", 0, svc.health) as server:
        r = httpx.get(server.url + "/healthz", timeout=5)
    assert r.status_code == 200  # degraded still serves: the node keeps and queues studies
    assert r.json()["status"] == "degraded" and r.json()["reasons"] == reasons
    svc.stop(timeout=5)


def test_spool_near_watermark_and_stuck_runner(tmp_path: Path) -> None:
    cfg = node_config(tmp_path, health={"stuck_job_seconds": 0.01})
    svc = build_service(cfg, lambda job: None)  # type: ignore[arg-type]
    free = svc.spool.free_bytes()
    near = node_config(tmp_path, scp={"min_free_bytes": int(free / 1.2)})
    svc_near = build_service(near, lambda job: None, state=None)  # type: ignore[arg-type]
    checks = {c.name: c for c in svc_near.health().checks}
    assert checks["spool_above_watermark"].ok
    assert not checks["spool_not_near_watermark"].ok
    assert "images will be refused soon" in checks["spool_not_near_watermark"].reason
    # a job running for longer than health.stuck_job_seconds
    import threading

    from node.runner import RunningJob

    job = svc.store.get(svc.store.begin_claim("k1", "t1", tmp_path / "j"))
    assert job is not None
    svc.runner._running[0] = RunningJob(job, 0, 0.0, 0.0)
    report = svc.health()
    stuck = {c.name: c for c in report.checks}["runner_not_stuck"]
    assert not stuck.ok and f"job {job.id} has been running" in stuck.reason
    assert threading.active_count() >= 1
    svc.store.close()
    svc_near.store.close()
