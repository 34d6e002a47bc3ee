"""The vendor's signed chain: truncation, reordering, tampering, rebuilt entries and heads are
each found by ``verify-chain``; the head signing is the one shared with the audit ledger."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secure_infer.chain import (
    VENDOR_ENTRY_DOMAIN,
    ChainError,
    HashChain,
    SignedHead,
    VendorHead,
    entry_hash,
    sign_hash,
    verify_chain,
)
from secure_infer.vendor._identity import HospitalIds, KeyFileError, load_or_create_secret
from secure_infer.vendor.cli import main

KEY = Ed25519PrivateKey.generate()


def _chain(path: Path, n: int, key: Ed25519PrivateKey = KEY, **kw: object) -> HashChain:
    chain = HashChain(path, key, **kw)  # type: ignore[arg-type]
    for i in range(n):
        chain.append(job=f"{chain.seq + 1:032x}", hospital="ab" * 16, model="m",
                     model_version="1", context_sha256="c" * 64,
                     request_sha256=f"{i:064x}", response_sha256="r" * 64)
    return chain


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def test_signed_chain_verifies_and_names_the_hospital_by_keyed_hash(tmp_path: Path) -> None:
    path = tmp_path / "chain.jsonl"
    _chain(path, 3)
    assert verify_chain(path) == 3
    entry = json.loads(_lines(path)[0])
    assert entry["v"] == 2 and entry["hospital"] == "ab" * 16 and len(entry["signature"]) == 128
    assert main(["verify-chain", str(path)]) == 0
    with pytest.raises(ValueError, match="keyed hash"):
        HashChain(path, KEY).append(job="f" * 32, hospital="hospital-a", model="m",
                                    model_version="1", context_sha256="c" * 64,
                                    request_sha256="0" * 64, response_sha256="r" * 64)


def test_truncated_to_its_first_line_is_detected(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                 ) -> None:
    path = tmp_path / "chain.jsonl"
    _chain(path, 4)
    path.write_text(_lines(path)[0])
    with pytest.raises(ChainError, match="ends at seq 1 but the signed head says seq 4: entries"
                                         " were cut off"):
        verify_chain(path)
    assert main(["verify-chain", str(path)]) == 1
    assert "BROKEN" in capsys.readouterr().out
    with pytest.raises(ChainError, match="refusing to continue"):
        HashChain(path, KEY)  # the server does not start on a cut chain


def test_head_deleted_or_rebuilt_without_the_key_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "chain.jsonl"
    _chain(path, 3)
    head = path.with_name("chain.jsonl.head")
    good = head.read_bytes()
    head.unlink()
    with pytest.raises(ChainError, match="signed head file missing: truncation not ruled out"):
        verify_chain(path)
    path.write_text("".join(_lines(path)[:2]))
    genuine = json.loads(good)
    forged = VendorHead.sign(Ed25519PrivateKey.generate(),
                             VendorHead(2, json.loads(_lines(path)[1])["entry_hash"], 9, "").at,
                             genuine["counter"] + 1)
    head.write_bytes(forged.to_bytes())
    with pytest.raises(ChainError, match="invalid signature"):
        verify_chain(path)


def test_reordered_entries_are_detected(tmp_path: Path) -> None:
    path = tmp_path / "chain.jsonl"
    _chain(path, 3)
    a, b, c = _lines(path)
    path.write_text(a + c + b)
    with pytest.raises(ChainError, match=r":2: prev_hash does not link to entry 1"):
        verify_chain(path)


def test_edited_entry_and_rehashed_entry_are_detected(tmp_path: Path) -> None:
    path = tmp_path / "chain.jsonl"
    _chain(path, 2)
    lines = _lines(path)
    e = json.loads(lines[0])
    e["model_version"] = "2"
    path.write_text(json.dumps(e) + "\n" + lines[1])
    with pytest.raises(ChainError, match=":1: entry_hash does not match its content"):
        verify_chain(path)
    # a rebuilt chain (hashes recomputed, signed by another key) fails on signatures
    other = Ed25519PrivateKey.generate()
    e["entry_hash"] = entry_hash(e)
    e["signature"] = sign_hash(other, VENDOR_ENTRY_DOMAIN, e["entry_hash"])
    path.write_text(json.dumps(e) + "\n")
    with pytest.raises(ChainError, match=":1: signature invalid"):
        verify_chain(path)


def test_anchor_catches_an_older_genuine_head(tmp_path: Path) -> None:
    path, anchor = tmp_path / "chain.jsonl", tmp_path / "elsewhere" / "chain.anchor"
    _chain(path, 2, anchor=anchor)
    old_head = path.with_name("chain.jsonl.head").read_bytes()
    old_lines = _lines(path)
    _chain(path, 2, anchor=anchor)
    assert verify_chain(path, anchor=anchor) == 4
    # cut back to 2 entries and put back the genuine head of that time: only the anchor knows
    path.write_text("".join(old_lines))
    path.with_name("chain.jsonl.head").write_bytes(old_head)
    assert verify_chain(path) == 2
    with pytest.raises(ChainError, match=r"anchor .* says seq 4: entries were cut off"):
        verify_chain(path, anchor=anchor)


def test_a_crash_between_entry_and_head_is_not_a_fault(tmp_path: Path) -> None:
    path = tmp_path / "chain.jsonl"
    _chain(path, 2)
    head = path.with_name("chain.jsonl.head")
    before = head.read_bytes()
    _chain(path, 1)
    head.write_bytes(before)  # the head write of the third append never happened
    assert verify_chain(path) == 3
    assert _chain(path, 1).seq == 4 and verify_chain(path) == 4


def test_unsigned_chain_of_the_old_format_is_refused_with_a_reason(tmp_path: Path) -> None:
    path = tmp_path / "chain.jsonl"
    _chain(path, 1)
    e = json.loads(_lines(path)[0])
    del e["v"], e["signature"]
    path.write_text(json.dumps(e) + "\n")
    with pytest.raises(ChainError, match="format version 1, expected 2"):
        verify_chain(path)


def test_head_domains_differ_between_records() -> None:
    from node.audit import SignedHead as AuditHead

    assert issubclass(AuditHead, SignedHead) and issubclass(VendorHead, SignedHead)
    assert AuditHead.DOMAIN != VendorHead.DOMAIN
    h = VendorHead.sign(KEY, VendorHead(1, "a" * 64, 1, "").at, 1)
    assert h.signature_valid(KEY.public_key())
    assert not AuditHead(h.seq, h.hash, h.counter, h.signature).signature_valid(KEY.public_key())
    with pytest.raises(TypeError):
        SignedHead.sign(KEY, h.at, 1)


def test_hospital_ids_are_keyed(tmp_path: Path) -> None:
    a, b = HospitalIds.load(tmp_path / "k1"), HospitalIds.load(tmp_path / "k2")
    assert a.of("hospital-a") == HospitalIds.load(tmp_path / "k1").of("hospital-a")
    assert a.of("hospital-a") != b.of("hospital-a") != a.of("hospital-b")
    assert len(a.of("x")) == 32 and a.label("x") == a.of("x")[:12]
    key = tmp_path / "k1" / "hospital_id.key"
    key.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_or_create_secret(key)
