"""Audit ledger: signed hash chain, every kind of tampering found at its first bad position."""

from __future__ import annotations

import itertools
import json
import os
import stat
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from node.audit import (
    GENESIS_HASH,
    SIGNATURE_DOMAIN,
    AuditDetailError,
    AuditEntry,
    AuditError,
    AuditKind,
    AuditLedger,
    check_details,
    entry_hash,
    export_since,
    load_public_key,
    open_ledger,
    verify_ledger,
)
from node.cli import main

STUDY = "st-0123456789abcdef"


def fill(ledger: AuditLedger, n: int) -> None:
    for i in range(n):
        ledger.append(AuditKind.STUDY_RECEIVED, {"study": STUDY, "instances": i})


@pytest.fixture
def ledger(tmp_path: Path) -> AuditLedger:
    led = AuditLedger.open(tmp_path / "audit" / "ledger.jsonl", tmp_path / "keys" / "audit.key")
    fill(led, 6)
    return led


def lines_of(led: AuditLedger) -> list[str]:
    return led.path.read_text().splitlines(keepends=True)


def rewrite(led: AuditLedger, lines: list[str]) -> None:
    led.path.write_text("".join(lines))


def verify(led: AuditLedger) -> Any:
    return verify_ledger(led.path, load_public_key(led.public_key_path))


def test_entries_are_chained_signed_and_published(ledger: AuditLedger, tmp_path: Path) -> None:
    entries = [AuditEntry.from_json(line) for line in lines_of(ledger)]
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5, 6]
    assert entries[0].prev_hash == GENESIS_HASH
    for prev, cur in itertools.pairwise(entries):
        assert cur.prev_hash == prev.hash
    e = entries[2]
    assert e.hash == entry_hash(1, e.seq, e.time, e.kind, e.details, e.prev_hash)
    ledger.public_key.verify(bytes.fromhex(e.signature), SIGNATURE_DOMAIN + bytes.fromhex(e.hash))
    key_mode = stat.S_IMODE((tmp_path / "keys" / "audit.key").stat().st_mode)
    assert key_mode == 0o600 and (tmp_path / "keys" / "audit.key").stat().st_size == 32
    assert ledger.public_key_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    report = verify(ledger)
    assert report.ok and report.entries == 6 and report.head_seq == 6


def test_reopen_continues_chain_and_rejects_other_key(ledger: AuditLedger,
                                                      tmp_path: Path) -> None:
    again = AuditLedger.open(ledger.path, tmp_path / "keys" / "audit.key")
    assert again.append("retry", {"step": "vendor", "attempt": 2}).seq == 7
    assert verify(again).ok
    with pytest.raises(AuditError, match="published key differs"):
        AuditLedger(ledger.path, Ed25519PrivateKey.generate())


# --- tampering ---------------------------------------------------------------------------------


def _edit_field(lines: list[str]) -> list[str]:
    obj = json.loads(lines[2])
    obj["details"]["instances"] = 99
    lines[2] = json.dumps(obj) + "\n"
    return lines


def _edit_and_rehash(lines: list[str]) -> list[str]:
    obj = json.loads(lines[3])
    obj["kind"] = "export_blocked"
    obj["hash"] = entry_hash(obj["v"], obj["seq"], obj["time"], obj["kind"], obj["details"],
                             obj["prev_hash"])
    lines[3] = json.dumps(obj) + "\n"
    return lines


def _forge(lines: list[str], at: int) -> list[str]:
    """Insert a well-linked, well-hashed entry signed with someone else's key."""
    prev = json.loads(lines[at - 1])
    body = {"v": 1, "seq": at + 1, "time": prev["time"], "kind": "sr_delivered",
            "details": {"study": STUDY}, "prev_hash": prev["hash"]}
    h = entry_hash(**body)
    sig = Ed25519PrivateKey.generate().sign(SIGNATURE_DOMAIN + bytes.fromhex(h)).hex()
    return [*lines[:at], json.dumps({**body, "hash": h, "signature": sig}) + "\n", *lines[at:]]


TAMPER = {
    # name: (transform, first bad line, reason fragment)
    "edit a field": (_edit_field, 3, "entry edited"),
    "edit and recompute hash": (_edit_and_rehash, 4, "signature invalid"),
    "delete a line": (lambda ls: ls[:1] + ls[2:], 2, "seq is 3, expected 2"),
    "delete first line": (lambda ls: ls[1:], 1, "seq is 2, expected 1"),
    "insert forged line": (lambda ls: _forge(ls, 3), 4, "signature invalid"),
    "insert a copy": (lambda ls: [*ls[:3], ls[1], *ls[3:]], 4, "seq is 2, expected 4"),
    "reorder two lines": (lambda ls: [ls[0], ls[2], ls[1], *ls[3:]], 2, "seq is 3, expected 2"),
    "truncate last two": (lambda ls: ls[:4], 5, "cut off the end"),
    "truncate mid-line": (lambda ls: [*ls[:5], ls[5][:40]], 6, "incomplete"),
    "garbage line": (lambda ls: [*ls[:2], "{not json\n", *ls[2:]], 3, "not a valid entry"),
    "extra key": (lambda ls: [ls[0].replace('{"v":1', '{"note":"x","v":1'), *ls[1:]], 1,
                  "unexpected: note"),
}


@pytest.mark.parametrize("case", sorted(TAMPER))
def test_tampering_detected_at_first_bad_position(ledger: AuditLedger, case: str) -> None:
    transform, bad_line, reason = TAMPER[case]
    assert verify(ledger).ok
    rewrite(ledger, transform(lines_of(ledger)))
    report = verify(ledger)
    assert not report.ok
    assert (report.bad_line, report.bad_seq) == (bad_line, bad_line), report.describe()
    assert reason in report.reason
    assert report.entries == bad_line - 1


def test_wrong_key_fails_at_first_entry(ledger: AuditLedger) -> None:
    other = Ed25519PrivateKey.generate().public_key()
    report = verify_ledger(ledger.path, other)
    assert (report.ok, report.bad_line) == (False, 1)
    assert "wrong public key" in report.reason


def test_missing_or_forged_head_detected(ledger: AuditLedger) -> None:
    head = json.loads(ledger.head_path.read_text())
    ledger.head_path.write_text(json.dumps({**head, "seq": 9}))
    assert "signed head names entry seq 6 but says seq 9" in verify(ledger).reason
    ledger.head_path.write_text(json.dumps({**head, "signature": "0" * 128}))
    assert "invalid signature" in verify(ledger).reason
    ledger.head_path.unlink()
    report = verify(ledger)
    assert (report.ok, report.bad_line) == (False, 7)
    assert "head file missing" in report.reason


def test_torn_tail_is_repaired_and_recorded(ledger: AuditLedger) -> None:
    with ledger.path.open("ab") as fh:  # a crash in the middle of an append
        fh.write(b'{"v":1,"seq":7,"time":"2026')
    assert not verify(ledger).ok
    entry = ledger.append(AuditKind.RESULT_RECEIVED, {"study": STUDY, "outputs": 2})
    kinds = [AuditEntry.from_json(line).kind for line in lines_of(ledger)]
    assert kinds[-2:] == ["ledger_repaired", "result_received"] and entry.seq == 8
    assert verify(ledger).ok


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_property_any_single_byte_change_is_detected(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        led = AuditLedger.open(Path(tmp) / "l.jsonl", Path(tmp) / "k", fsync=False)
        fill(led, 4)
        raw = bytearray(led.path.read_bytes())
        pos = data.draw(st.integers(0, len(raw) - 1))
        new = data.draw(st.integers(0, 255).filter(lambda b: b != raw[pos]))
        raw[pos] = new
        led.path.write_bytes(bytes(raw))
        report = verify_ledger(led.path, led.public_key)
        assert not report.ok
        line_of_pos = bytes(raw[:pos]).count(b"\n") + 1
        assert report.bad_line is not None and report.bad_line <= line_of_pos


# --- PHI guard ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "details",
    [
        {"study": STUDY, "rule": "chest-ai", "action": "infer"},
        {"model_version": "1.2.3", "context_hash": "a" * 64, "ciphertext_hashes": ["b" * 64]},
        {"sop_class": "1.2.840.10008.5.1.4.1.1.1.1"},  # standard UIDs identify nobody
        {"when": "2026-11-23T10:00:00.5Z", "bytes": 1234, "ok": True, "ratio": 0.5, "x": None},
        {"nested": {"series": ["se-0011223344556677"]}},
        {"peer": "127.0.0.1:11112"},
    ],
)
def test_details_allowed(details: dict[str, Any]) -> None:
    check_details("inference_requested", details) if "model_version" in details else \
        check_details("study_received", details)


@pytest.mark.parametrize(
    ("details", "where"),
    [
        ({"PatientName": "x"}, "details.PatientName: key is on the PHI deny-list"),
        ({"patient_id": "st-1"}, "details.patient_id: key is on the PHI deny-list"),
        ({"nested": {"accession-number": "1"}}, "details.nested.accession-number: key"),
        ({"study": "1.2.826.0.1.3680043.8.498.12345"}, "details.study: looks like a raw DICOM UID"),
        ({"msg": "failed for 2.25.329800735698586629295641978511506172918 now"},
         "details.msg: looks like a raw DICOM UID"),
        ({"list": ["ok", "1.3.6.1.4.1.9590.100.1.2"]}, "details.list[1]: looks like a raw"),
        ({"who": "Doe^John"}, "details.who: looks like a DICOM person name"),
        ({"by_study": {"1.2.826.0.1.3680043.8.498.5": 1}}, "details.by_study: a key looks like"),
        ({"blob": b"\x00"}, "details.blob: bytes is not a JSON value"),
        ({"n": float("nan")}, "details.n: not a finite number"),
        ({"s": "x" * 2000}, "details.s: string longer than"),
    ],
)
def test_details_refused_without_echoing_value(details: dict[str, Any], where: str,
                                               ledger: AuditLedger) -> None:
    before = ledger.path.read_bytes()
    with pytest.raises(AuditDetailError) as info:
        ledger.append("retry", details)
    assert str(info.value).startswith(where)
    assert "Doe" not in str(info.value) and "3680043" not in str(info.value)
    assert ledger.path.read_bytes() == before  # nothing written


def test_kind_and_required_details() -> None:
    with pytest.raises(AuditDetailError, match="snake_case"):
        check_details("Study Received", {})
    with pytest.raises(AuditDetailError, match="needs context_hash, ciphertext_hashes"):
        check_details("inference_requested", {"model_version": "v2"})


# --- CLI ---------------------------------------------------------------------------------------


def test_cli_verify(ledger: AuditLedger, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "verify", "--ledger", str(ledger.path)]) == 0
    out = capsys.readouterr().out
    assert "OK: 6 entries, chain intact, signed head at seq 6" in out and "SHA256:" in out
    rewrite(ledger, _edit_field(lines_of(ledger)))
    assert main(["audit", "verify", "--ledger", str(ledger.path),
                 "--public-key", str(ledger.public_key_path)]) == 1
    out = capsys.readouterr().out
    assert "TAMPERED: first bad entry at line 3 (seq 3)" in out


def test_cli_verify_from_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "node.yaml"
    cfg.write_text(f"node:\n  state_dir: {tmp_path / 'state'}\n")
    from node.config import load_config

    c = load_config(cfg)
    led = open_ledger(c)
    assert led is not None
    fill(led, 2)
    assert led.path == tmp_path / "state" / "audit" / "ledger.jsonl"
    assert c.audit_key_file == tmp_path / "state" / "keys" / "audit_ed25519.key"
    assert main(["audit", "verify", "--config", str(cfg)]) == 0
    assert "OK: 2 entries" in capsys.readouterr().out
    cfg.write_text(f"node:\n  state_dir: {tmp_path / 'state'}\naudit:\n  enabled: false\n")
    assert open_ledger(load_config(cfg)) is None


def test_cli_bad_since_is_usage_error(ledger: AuditLedger) -> None:
    with pytest.raises(SystemExit) as info:
        main(["audit", "export", "--ledger", str(ledger.path), "--since", "yesterday"])
    assert info.value.code == 2


def test_cli_export_since(ledger: AuditLedger, tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    base = datetime(2030, 1, 1, tzinfo=UTC)
    for i in range(3):
        ledger.append("sr_delivered", {"study": STUDY, "n": i}, time=base + timedelta(hours=i))
    out = tmp_path / "export.jsonl"
    assert main(["audit", "export", "--ledger", str(ledger.path),
                 "--since", "2030-01-01T01:00:00Z", "-o", str(out)]) == 0
    exported = [AuditEntry.from_json(line) for line in out.read_text().splitlines()]
    assert [e.details["n"] for e in exported] == [1, 2]
    assert [e.seq for e in exported] == [8, 9]
    assert exported[1].prev_hash == exported[0].hash  # still a verifiable segment
    assert list(export_since(ledger.path, datetime(2030, 1, 1, 2))) == out.read_text(
    ).splitlines()[1:]  # naive = UTC
    rewrite(ledger, _edit_field(lines_of(ledger)))
    assert main(["audit", "export", "--ledger", str(ledger.path), "--since", "2030-01-01"]) == 1
    assert "not exporting" in capsys.readouterr().err


def test_fsync_off_still_valid(tmp_path: Path) -> None:
    led = AuditLedger.open(tmp_path / "l.jsonl", tmp_path / "k", fsync=False)
    fill(led, 3)
    assert verify_ledger(led.path, led.public_key).ok
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    assert os.stat(led.path).st_size > 0
