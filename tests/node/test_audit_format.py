"""The ledger format in docs/audit.md is enough to verify a ledger without importing node.audit.

This is what the vendor peer (which must not import ``node``) or an external auditor would write;
if the implementation drifts from the documented format, this independent verifier fails.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from node.audit import AuditLedger


def independent_verify(ledger: Path, pem: bytes) -> int:
    """Verify per docs/audit.md only; returns the number of entries."""
    key = serialization.load_pem_public_key(pem)
    assert isinstance(key, Ed25519PublicKey)
    prev, seq = "0" * 64, 0
    for line in ledger.read_text(encoding="utf-8").splitlines():
        e = json.loads(line)
        body = {k: e[k] for k in ("v", "seq", "time", "kind", "details", "prev_hash")}
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                               allow_nan=False).encode("ascii")
        assert e["v"] == 1 and e["seq"] == seq + 1 and e["prev_hash"] == prev
        assert hashlib.sha256(canonical).hexdigest() == e["hash"]
        key.verify(bytes.fromhex(e["signature"]),
                   b"blindread-audit-v1\x00" + bytes.fromhex(e["hash"]))
        assert e["time"].endswith("Z")
        prev, seq = e["hash"], e["seq"]
    head = json.loads((ledger.parent / (ledger.name + ".head")).read_text())
    assert (head["seq"], head["hash"]) == (seq, prev)
    return seq


def test_documented_format_verifies(tmp_path: Path) -> None:
    led = AuditLedger.open(tmp_path / "ledger.jsonl", tmp_path / "audit.key")
    led.append("study_received", {"study": "st-00112233aabbccdd", "instances": 3,
                                  "calling_ae": "PACS"})
    led.append("inference_requested", {
        "study": "st-00112233aabbccdd", "model_version": "cxr-v2@1.0.0",
        "context_hash": hashlib.sha256(b"ctx").hexdigest(),
        "ciphertext_hashes": [hashlib.sha256(b"ct0").hexdigest()],
        "note": "caf\u00e9 \u2713",  # non-ASCII is escaped in the hashed form
    })
    led.append("sr_delivered", {"study": "st-00112233aabbccdd", "destination": "pacs",
                                "ratio": 0.25, "ok": True, "missing": None})
    pem = (tmp_path / "ledger.jsonl.pub").read_bytes()
    assert independent_verify(led.path, pem) == 3


def test_ledger_and_vendor_chain_follow_one_format(tmp_path: Path) -> None:
    """Both records link by the shared rules in secure_infer.chain (genesis, seq, prev_hash,
    hash of the canonical body), so one checker walks either file."""
    from secure_infer import ChainHead, body_hash
    from secure_infer.chain import HashChain

    led = AuditLedger.open(tmp_path / "ledger.jsonl", tmp_path / "audit.key")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    chain = HashChain(tmp_path / "chain.jsonl", Ed25519PrivateKey.generate())
    for i in range(3):
        led.append("retry", {"attempt": i})
        chain.append(job=f"{i:032x}", hospital="ab" * 16, model="m", model_version="1",
                     context_sha256="c" * 64, request_sha256=f"{i:064x}",
                     response_sha256="r" * 64)
    for path, hash_key, unhashed in ((led.path, "hash", {"hash", "signature"}),
                                     (chain.path, "entry_hash", {"entry_hash", "signature"})):
        tip = ChainHead()
        for line in path.read_text(encoding="utf-8").splitlines():
            e = json.loads(line)
            body = {k: v for k, v in e.items() if k not in unhashed}
            assert tip.faults(e["seq"], e["prev_hash"], e[hash_key], body_hash(body)) == ()
            tip = tip.then(e[hash_key])
        assert tip.seq == 3
