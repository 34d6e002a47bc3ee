"""Signed heads and the anchor kept outside the ledger's directory (issue #16, defect 6).

Cutting entries off the end and rebuilding the head from the new last line, emptying the ledger,
deleting the head of a one-entry ledger, or putting back an older genuine head are all found;
the node also refuses to sign over a ledger shorter than its anchor.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from node.audit import (
    AuditEntry,
    AuditError,
    AuditKind,
    AuditLedger,
    SignedHead,
    load_public_key,
    verify_ledger,
)
from node.cli import main
from secure_infer import ChainHead

STUDY = "st-0123456789abcdef"


def fill(led: AuditLedger, n: int) -> None:
    for i in range(n):
        led.append(AuditKind.STUDY_RECEIVED, {"study": STUDY, "instances": i})


@pytest.fixture
def ledger(tmp_path: Path) -> AuditLedger:
    led = AuditLedger.open(tmp_path / "audit" / "ledger.jsonl", tmp_path / "keys" / "audit.key",
                           anchor=tmp_path / "keys" / "ledger.jsonl.anchor")
    fill(led, 8)
    return led


def lines(led: AuditLedger) -> list[str]:
    return led.path.read_text().splitlines(keepends=True)


def verify(led: AuditLedger, anchored: bool = True) -> Any:
    return verify_ledger(led.path, load_public_key(led.public_key_path),
                         anchor=led.anchor if anchored else None)


def cut_and_rebuild_head(led: AuditLedger, keep: int, *, new_format: bool) -> None:
    """What someone without the key can do: cut entries, write a head for the new last line."""
    kept = lines(led)[:keep]
    led.path.write_text("".join(kept))
    last = json.loads(kept[-1])
    head: dict[str, Any] = {"seq": last["seq"], "hash": last["hash"],
                            "signature": last["signature"]}
    if new_format:  # the entry's signature passed off as the head's
        head = {"v": 1, **head, "counter": last["seq"]}
    led.head_path.write_text(json.dumps(head))


def test_head_is_signed_with_its_own_domain_and_anchored(ledger: AuditLedger) -> None:
    head = SignedHead.read(ledger.head_path)
    assert isinstance(head, SignedHead) and head.signature_valid(ledger.public_key)
    assert (head.seq, head.counter) == (8, 8)
    assert head.hash == json.loads(lines(ledger)[-1])["hash"]
    assert ledger.anchor is not None and ledger.anchor.read_bytes() == ledger.head_path.read_bytes()
    report = verify(ledger)
    assert report.ok and (report.head_seq, report.anchor_seq) == (8, 8), report.describe()


@pytest.mark.parametrize("new_format", [False, True])
def test_tail_cut_and_head_rebuilt_is_detected(ledger: AuditLedger, new_format: bool) -> None:
    cut_and_rebuild_head(ledger, 3, new_format=new_format)
    for anchored in (False, True):  # the head alone already gives it away
        report = verify(ledger, anchored)
        assert not report.ok and report.bad_line == 4, report.describe()
        assert "signed head" in report.reason
        assert ("old unsigned format" if not new_format else "invalid signature") in report.reason


def test_tail_cut_back_to_an_older_genuine_head_is_caught_by_the_anchor(
    ledger: AuditLedger, tmp_path: Path
) -> None:
    led2 = tmp_path / "copy"
    led2.mkdir()
    old_lines = lines(ledger)
    saved_head = ledger.head_path.read_bytes()  # a genuine head at seq 8, kept by the attacker
    fill(ledger, 4)
    ledger.path.write_text("".join(old_lines))  # cut the last 4 ...
    ledger.head_path.write_bytes(saved_head)  # ... and put back the head that fits
    assert verify(ledger, anchored=False).ok  # the ledger's directory alone cannot tell
    report = verify(ledger)
    assert not report.ok and report.bad_line == 9
    assert "ledger ends at seq 8 but the anchor" in report.reason and "says seq 12" in report.reason
    assert "cut off the end" in report.reason
    with pytest.raises(AuditError, match="ledger ends at seq 8 but its anchor"):
        ledger.append("retry", {"step": "vendor"})  # the node does not sign over the cut
    with pytest.raises(AuditError, match="says seq 12"):
        AuditLedger.open(ledger.path, tmp_path / "keys" / "audit.key", anchor=ledger.anchor)


def test_head_rewritten_is_detected(ledger: AuditLedger) -> None:
    genuine = ledger.head_path.read_bytes()
    forged = SignedHead.sign(Ed25519PrivateKey.generate(), ChainHead(8, SignedHead.read(
        ledger.head_path).hash), 8)  # type: ignore[union-attr]
    ledger.head_path.write_bytes(forged.to_bytes())
    assert "signed head has an invalid signature" in verify(ledger).reason
    ledger.head_path.write_text("{not json")
    assert "signed head unreadable" in verify(ledger).reason
    # an older genuine head while the ledger is whole: rolled back
    ledger.head_path.write_bytes(genuine)
    fill(ledger, 3)
    ledger.head_path.write_bytes(genuine)
    report = verify(ledger, anchored=False)
    assert not report.ok and "replaced by an older one" in report.reason
    # the anchor ahead of the ledger's own head (head put back one step)
    ledger.anchor.write_bytes(ledger.head_path.read_bytes())  # type: ignore[union-attr]
    assert not verify(ledger).ok


def test_empty_ledger_is_detected(ledger: AuditLedger) -> None:
    ledger.path.write_text("")
    report = verify(ledger)
    assert not report.ok and "ledger ends at seq 0" in report.reason
    ledger.head_path.unlink()  # emptied and its head deleted: still found without the anchor
    for anchored in (False, True):
        report = verify(ledger, anchored)
        assert not report.ok and report.bad_line == 1
        assert "signed head file missing" in report.reason


def test_fresh_empty_ledger_verifies(tmp_path: Path) -> None:
    led = AuditLedger.open(tmp_path / "a" / "l.jsonl", tmp_path / "k" / "key",
                           anchor=tmp_path / "k" / "l.anchor")
    report = verify(led)
    assert report.ok and (report.entries, report.head_seq, report.anchor_seq) == (0, 0, 0)


def test_one_entry_without_head_is_detected(tmp_path: Path) -> None:
    led = AuditLedger.open(tmp_path / "l.jsonl", tmp_path / "key")
    fill(led, 1)
    led.head_path.unlink()
    report = verify_ledger(led.path, led.public_key)
    assert not report.ok and (report.bad_line, report.entries) == (2, 1)
    assert "signed head file missing" in report.reason


@pytest.mark.parametrize(
    ("case", "bad_line"),
    [("edit", 3), ("delete", 2), ("reorder", 2)],
)
def test_entry_tampering_still_detected_with_anchor(ledger: AuditLedger, case: str,
                                                    bad_line: int) -> None:
    ls = lines(ledger)
    if case == "edit":
        ls[2] = ls[2].replace('"instances":2', '"instances":7')
    elif case == "delete":
        del ls[1]
    else:
        ls[1], ls[2] = ls[2], ls[1]
    ledger.path.write_text("".join(ls))
    report = verify(ledger)
    assert not report.ok and report.bad_line == bad_line, report.describe()


def test_crash_between_entry_and_head_is_accepted(ledger: AuditLedger) -> None:
    head, anchor = ledger.head_path.read_bytes(), ledger.anchor.read_bytes()  # type: ignore
    fill(ledger, 1)
    ledger.head_path.write_bytes(head)  # the entry landed, its head did not
    ledger.anchor.write_bytes(anchor)  # type: ignore[union-attr]
    assert verify(ledger).ok
    ledger.append("retry", {"step": "vendor"})
    report = verify(ledger)
    assert report.ok and report.anchor_seq == 10


def test_anchor_deleted_or_added_later_is_recorded(ledger: AuditLedger, tmp_path: Path) -> None:
    assert ledger.anchor is not None
    ledger.anchor.unlink()
    report = verify(ledger)
    assert not report.ok and "file missing" in report.reason
    again = AuditLedger.open(ledger.path, tmp_path / "keys" / "audit.key", anchor=ledger.anchor)
    last = AuditEntry.from_json(lines(again)[-1])
    assert (last.kind, last.details["entries_before"]) == ("ledger_anchored", 8)
    assert verify(again).ok


def test_cli_verify_from_config_uses_the_anchor(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from node.audit import open_ledger
    from node.config import load_config

    cfg = tmp_path / "node.yaml"
    cfg.write_text(f"node:\n  state_dir: {tmp_path / 'state'}\n")
    led = open_ledger(load_config(cfg))
    assert led is not None and led.anchor == tmp_path / "state" / "keys" / "ledger.jsonl.anchor"
    fill(led, 6)
    assert main(["audit", "verify", "--config", str(cfg)]) == 0
    assert "anchored at seq 6" in capsys.readouterr().out
    saved = tmp_path / "saved"
    saved.mkdir()
    shutil.copy(led.path, saved / "ledger")
    shutil.copy(led.head_path, saved / "head")
    fill(led, 5)
    shutil.copy(saved / "ledger", led.path)
    shutil.copy(saved / "head", led.head_path)
    assert main(["audit", "verify", "--config", str(cfg)]) == 1
    out = capsys.readouterr().out
    assert "TAMPERED" in out and "ledger ends at seq 6" in out and "says seq 11" in out
    assert main(["audit", "verify", "--ledger", str(led.path), "--anchor", str(led.anchor)]) == 1
