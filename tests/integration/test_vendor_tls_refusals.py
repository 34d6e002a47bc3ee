"""Refused TLS handshakes at the vendor are logged (address + fixed reason, rate-limited per
address and reason) and counted in ``blindread_vendor_tls_refused_total{reason}`` (#16 defect 9).

A real vendor process; clients without a certificate, with one from another CA, with an expired
one from the right CA, and plain HTTP on the TLS port.
"""

from __future__ import annotations

import datetime as dt
import re
import socket
import time
from pathlib import Path

import httpx
import pytest

from secure_infer.vendor import certs
from tests.integration.test_vendor_link import (
    VendorProcess,
    make_pki,
    raw_client,
    write_model_package,
)


def _refused(vp: VendorProcess, pair: certs.CertPair | None) -> None:
    with raw_client(vp, pair, timeout=10) as c, pytest.raises(httpx.TransportError):
        c.get("/v1/health")


def _wait_for(vp: VendorProcess, pattern: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = vp.log()
        if re.search(pattern, text):
            return text
        time.sleep(0.1)
    raise AssertionError(f"no log line matching {pattern!r}:\n{vp.log()[-3000:]}")


def _metric(vp: VendorProcess, reason: str) -> float:
    with raw_client(vp, vp.pki.hospital_a) as c:
        text = c.get("/metrics").text
    name = f'blindread_vendor_tls_refused_total{{reason="{reason}"}}'
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert m, text
    return float(m.group(1))


def test_refused_handshakes_are_logged_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pki = make_pki(tmp_path)
    with monkeypatch.context() as m:  # issued 30 days ago for one day, by the right CA
        m.setattr(certs, "_now", lambda: dt.datetime.now(dt.UTC) - dt.timedelta(days=30))
        expired = certs.issue_client_cert(tmp_path / "ca", tmp_path / "old", "hospital-old", 1)
    model = write_model_package(tmp_path / "models", "mlp", side=8, kernel=2, seed=3, mlp=True)
    vp = VendorProcess(tmp_path / "srv", pki, [model]).start()
    try:
        _refused(vp, None)
        _refused(vp, None)  # same address and reason within a minute: counted, not logged
        _refused(vp, pki.rogue)
        _refused(vp, expired)
        with socket.create_connection(("127.0.0.1", vp.port), timeout=5) as s:
            s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
            s.recv(100)

        text = _wait_for(vp, r"refused: plain_http")
        lines = [ln for ln in text.splitlines() if "TLS handshake from" in ln]
        assert len([ln for ln in lines if "no_certificate" in ln]) == 1, lines
        for reason in ("no_certificate", "unknown_ca", "expired", "plain_http"):
            assert any(f"from 127.0.0.1 refused: {reason} (" in ln for ln in lines), lines
        # no certificate subject (hospital CN) nor anything else of the peer in the lines
        assert not any("hospital" in ln for ln in lines), lines

        assert _metric(vp, "no_certificate") == 2
        assert _metric(vp, "unknown_ca") == 1
        assert _metric(vp, "expired") == 1
        assert _metric(vp, "plain_http") == 1
        # the refused clients did not disturb the legitimate one
        with raw_client(vp, pki.hospital_a) as c:
            assert c.get("/v1/health").status_code == 200
        assert _metric(vp, "no_certificate") == 2
        assert "listening on https://127.0.0.1" in text
    finally:
        vp.stop()
