"""Unit checks of the vendor's TLS-refusal bookkeeping (the process-level test is
tests/integration/test_vendor_tls_refusals.py): reason mapping and per-address rate limit."""

from __future__ import annotations

import logging
import ssl

import pytest

from secure_infer.vendor._handshake import REASONS, TlsRefusals, refusal_reason


def _ssl_error(reason: str) -> ssl.SSLError:
    exc = ssl.SSLError(1, f"[SSL: {reason}] x")
    exc.reason = reason  # type: ignore[misc]
    return exc


def _verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, "verify failed")
    exc.verify_code = code
    exc.verify_message = message
    return exc


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (_ssl_error("PEER_DID_NOT_RETURN_A_CERTIFICATE"), "no_certificate"),
        (_ssl_error("HTTP_REQUEST"), "plain_http"),
        (_ssl_error("UNSUPPORTED_PROTOCOL"), "protocol"),
        (_ssl_error("SOMETHING_NEW"), "other"),
        (_verify_error(20, "unable to get local issuer certificate"), "unknown_ca"),
        (_verify_error(10, "certificate has expired"), "expired"),
        (_verify_error(9, "certificate is not yet valid"), "not_yet_valid"),
        (_verify_error(26, "unsupported certificate purpose"), "bad_certificate"),
        (ConnectionAbortedError("SSL handshake is taking longer than 60 seconds"), "timeout"),
        (ConnectionResetError(), "closed"),
        (RuntimeError("?"), "other"),
    ],
)
def test_reasons_are_fixed_labels(exc: BaseException, reason: str) -> None:
    got, detail = refusal_reason(exc)
    assert got == reason and got in REASONS and detail


def test_one_line_per_address_and_reason_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    now = [0.0]
    counted: list[str] = []
    r = TlsRefusals(counted.append, interval=60.0, clock=lambda: now[0])
    no_cert = _ssl_error("PEER_DID_NOT_RETURN_A_CERTIFICATE")
    assert r.refused(("10.0.0.1", 5000), no_cert)
    assert not r.refused(("10.0.0.1", 5001), no_cert)  # same address + reason: counted only
    assert not r.refused(("10.0.0.1", 5002), no_cert)
    assert r.refused(("10.0.0.1", 5003), ConnectionResetError())  # another reason
    assert r.refused(("10.0.0.2", 5000), no_cert)  # another address
    now[0] = 61.0
    assert r.refused(("10.0.0.1", 5004), no_cert)
    assert counted.count("no_certificate") == 5 and counted.count("closed") == 1
    lines = [rec.getMessage() for rec in caplog.records]
    assert len(lines) == 4
    assert lines[-1].startswith("TLS handshake from 10.0.0.1 refused: no_certificate (")
    assert "(2 more like it suppressed)" in lines[-1]
    assert all("5000" not in ln and "5004" not in ln for ln in lines)  # address, not port


def test_many_addresses_stay_bounded() -> None:
    r = TlsRefusals(interval=60.0, max_keys=4, clock=lambda: 0.0)
    for i in range(100):
        r.refused((f"10.0.1.{i}", 1), ConnectionResetError())
    assert len(r._seen) <= 5
