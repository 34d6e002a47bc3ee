"""ATNA export (issue #14): ledger events as DICOM PS3.15 A.5 audit messages in RFC 5424 syslog,
received by a real rsyslogd over UDP, TCP (RFC 6587 octet counting) and TLS (RFC 5425); a
receiver that is down never blocks auditing, and what cannot be sent is counted as dropped."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from node.atna import AtnaExporter, attach_exporter, audit_message, syslog_message
from node.audit import AuditLedger
from node.config import ConfigError, NodeConfig, parse_model
from node.config.atna import AtnaSection
from secure_infer import vendor_main
from tests.support.peers import free_port
from tests.support.rsyslog import Rsyslog

STUDY = "st-" + "ab" * 16


def _ledger(tmp_path: Path) -> AuditLedger:
    return AuditLedger(tmp_path / "audit" / "ledger.jsonl", Ed25519PrivateKey.generate(),
                       fsync=False)


def _xml(line: str) -> ET.Element:
    return ET.fromstring(line[line.index("<AuditMessage"):])


def test_message_is_a_dicom_audit_message_of_the_entry(tmp_path: Path) -> None:
    entry = _ledger(tmp_path).append("study_received", {"study": STUDY, "instances": 3})
    root = ET.fromstring(audit_message(entry, source_id="site-1", node_name="ct1", host="h"))
    ident = root.find("EventIdentification")
    assert ident is not None and ident.get("EventActionCode") == "C"
    assert ident.get("EventDateTime") == entry.time and ident.get("EventOutcomeIndicator") == "0"
    event_id = root.find("EventIdentification/EventID")
    assert event_id is not None and event_id.get("csd-code") == "110104"
    assert event_id.get("codeSystemName") == "DCM"
    src = root.find("AuditSourceIdentification")
    assert src is not None and src.get("AuditSourceID") == "site-1"
    obj = root.find("ParticipantObjectIdentification")
    assert obj is not None and obj.get("ParticipantObjectID") == STUDY
    types = {d.get("type") for d in obj.findall("ParticipantObjectDetail")}
    assert types == {"ledger_seq", "ledger_hash", "instances"}
    msg = syslog_message(b"<AuditMessage/>", host="h", app_name="ct1", procid="7",
                         timestamp=entry.time)
    assert msg.startswith(f"<85>1 {entry.time} h ct1 7 IHE+RFC-3881 - ".encode())
    assert msg.endswith(b"\xef\xbb\xbf<AuditMessage/>")


def test_config_section(tmp_path: Path) -> None:
    cfg = parse_model({"audit": {"atna": {"destinations": [
        {"transport": "udp", "host": "127.0.0.1", "port": 514}]}}}, NodeConfig)
    assert cfg.audit.atna.destinations[0].label == "udp://127.0.0.1:514"
    assert parse_model({}, NodeConfig).audit.atna.destinations == ()  # off by default
    with pytest.raises(ConfigError) as err:
        parse_model({"audit": {"atna": {"destinations": [
            {"transport": "tls", "host": "h", "port": 6514}]}}}, NodeConfig)
    assert "transport tls needs 'ca'" in err.value.problems[0]


@pytest.fixture
def certs(tmp_path: Path) -> tuple[Path, Path, Path]:
    assert vendor_main(["issue-cert", "ca", "--ca-dir", str(tmp_path / "ca")]) == 0
    assert vendor_main(["issue-cert", "server", "--ca-dir", str(tmp_path / "ca"),
                        "--out", str(tmp_path / "srv")]) == 0
    srv = tmp_path / "srv"
    return tmp_path / "ca" / "ca.crt", srv / "server.crt", srv / "server.key"


def test_real_rsyslog_receives_over_udp_tcp_and_tls(
    tmp_path: Path, certs: tuple[Path, Path, Path]
) -> None:
    ca, cert, key = certs
    with Rsyslog(tmp_path / "rsyslog", ca, cert, key) as rs:
        section = AtnaSection.model_validate({"destinations": [
            {"transport": "udp", "host": "127.0.0.1", "port": rs.udp},
            {"transport": "tcp", "host": "127.0.0.1", "port": rs.tcp},
            {"transport": "tls", "host": "127.0.0.1", "port": rs.tls, "ca": str(ca)},
        ]})
        ledger = _ledger(tmp_path)
        exporter = attach_exporter(ledger, section, "blindread-ct1", None)
        assert exporter is not None
        first = ledger.append("study_received", {"study": STUDY, "instances": 2})
        second = ledger.append("job_failed", {"study": STUDY, "error": "VendorUnavailableError"})
        exporter.close(timeout=15)
        lines = rs.lines(6)
    assert len(lines) == 6, lines
    for dest in section.destinations:
        assert exporter.count(dest.label, "sent") == 2
        assert exporter.count(dest.label, "dropped") == 0
    for line in lines:
        assert line.startswith("<85>1 ") and " blindread-ct1 " in line
        assert " IHE+RFC-3881 - " in line
    roots = [_xml(line) for line in lines]
    seqs = sorted(
        int(base64.b64decode(d.get("value", "")))
        for r in roots for d in r.iter("ParticipantObjectDetail") if d.get("type") == "ledger_seq"
    )
    assert seqs == sorted([first.seq, second.seq] * 3)
    failed = [r for r in roots if r.find("EventIdentification/EventTypeCode").get("csd-code")  # type: ignore[union-attr]
              == "job_failed"]
    assert len(failed) == 3
    assert all(r.find("EventIdentification").get("EventOutcomeIndicator") == "8"  # type: ignore[union-attr]
               for r in failed)
    assert all(r.find("ParticipantObjectIdentification").get("ParticipantObjectID") == STUDY  # type: ignore[union-attr]
               for r in roots)


def test_a_down_receiver_never_blocks_and_drops_are_counted(tmp_path: Path) -> None:
    port = free_port()  # nothing listens
    section = AtnaSection.model_validate({
        "destinations": [{"transport": "tcp", "host": "127.0.0.1", "port": port}],
        "queue_size": 1, "max_attempts": 2, "retry_seconds": 0.05, "timeout_seconds": 1,
    })
    ledger = _ledger(tmp_path)
    exporter = attach_exporter(ledger, section, "n", None)
    assert isinstance(exporter, AtnaExporter)
    entries = [ledger.append("retry", {"study": STUDY, "attempt": i}) for i in range(6)]
    assert [e.seq for e in entries] == list(range(entries[0].seq, entries[0].seq + 6))
    label = f"tcp://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while exporter.count(label, "dropped") < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    exporter.close(timeout=2)
    assert exporter.count(label, "dropped") == 6  # queue-full drops + failed sends
    assert exporter.count(label, "sent") == 0
