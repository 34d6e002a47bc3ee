"""Tamper-evident audit ledger: append-only, hash-chained, Ed25519-signed JSON lines.

Each line is one entry (format in docs/audit.md)::

    {"v":1,"seq":7,"time":"2026-11-23T10:00:00.123456Z","kind":"rule_matched",
     "details":{"study":"st-9f2c...","rule":"chest-ai"},"prev_hash":"<64 hex>",
     "hash":"<64 hex>","signature":"<128 hex>"}

``hash = SHA-256(canonical JSON of {v, seq, time, kind, details, prev_hash})``, the first
entry's ``prev_hash`` is 64 zeros, and ``signature = Ed25519(b"blindread-audit-v1\\0" + hash
bytes)``. After each append the newest (seq, hash) and a monotonic ``counter`` are signed as a
*head* (its own signature domain, so an entry's signature cannot be passed off as a head) and
written to ``<ledger>.head`` and, when an anchor is configured, to an anchor file in another
directory (``audit.anchor_dir``) that someone who can rewrite the ledger's directory cannot: entries
cut off the end, a head rebuilt or replaced by an older one, or an emptied ledger are then found
(docs/audit.md says exactly what is and is not detectable). The public key is published as
``<ledger>.pub``.

The chain format itself (genesis, canonical JSON, body hash, linking, torn-tail repair, what a
signature covers) is :mod:`secure_infer.chain`, shared with the vendor's request chain (the
vendor must not import ``node``); this module adds the ledger's fields, the Ed25519 signatures,
the signed head and the PHI guard. The format stays simple enough for external auditors to
re-implement from docs/audit.md.

Details carry pseudonyms and hashes only. :func:`check_details` refuses values that look like a
raw DICOM UID or a DICOM person name and keys from a PHI deny-list, so a careless caller gets an
exception instead of a ledger full of identifiers.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import json
import logging
import math
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from prometheus_client import CollectorRegistry

from node.atna import attach_exporter
from node.config import NodeConfig
from node.errors import NodeError
from node.keys import load_or_create_secret
from secure_infer import (
    GENESIS,
    ChainHead,
    LinkFault,
    append_line,
    body_hash,
    canonical_json,
    cut_torn_tail,
    head_fault,
    key_fingerprint,
    publish_public_key,
    read_last_line,
    sign_hash,
    signature_valid,
)
from secure_infer import SignedHead as _SharedSignedHead
from secure_infer import load_public_key as _load_public_key

log = logging.getLogger(__name__)

__all__ = [
    "FORMAT_VERSION",
    "GENESIS_HASH",
    "HEAD_SIGNATURE_DOMAIN",
    "SIGNATURE_DOMAIN",
    "AuditDetailError",
    "AuditEntry",
    "AuditError",
    "AuditKind",
    "AuditLedger",
    "SignedHead",
    "VerifyReport",
    "canonical_json",
    "check_details",
    "entry_hash",
    "export_since",
    "head_path",
    "key_fingerprint",
    "load_public_key",
    "open_ledger",
    "public_key_path",
    "verify_ledger",
]

FORMAT_VERSION = 1
GENESIS_HASH = GENESIS
SIGNATURE_DOMAIN = b"blindread-audit-v1\x00"
HEAD_SIGNATURE_DOMAIN = b"blindread-audit-head-v1\x00"
_ENTRY_KEYS = frozenset({"v", "seq", "time", "kind", "details", "prev_hash", "hash", "signature"})


class AuditError(NodeError):
    """The ledger cannot be written or read (damaged tail, key mismatch, I/O error)."""


class AuditDetailError(AuditError, ValueError):
    """An entry's details were refused because they could contain PHI."""


class AuditKind(enum.StrEnum):
    """Kinds of events the node records. Other ``snake_case`` kinds are accepted too."""

    STUDY_RECEIVED = "study_received"
    RULE_MATCHED = "rule_matched"
    DEIDENTIFIED = "deidentified"
    INFERENCE_REQUESTED = "inference_requested"
    RESULT_RECEIVED = "result_received"
    SR_DELIVERED = "sr_delivered"
    FORWARDED = "forwarded"
    DISCARDED = "discarded"
    EXPORT_BLOCKED = "export_blocked"
    RETRY = "retry"
    JOB_FAILED = "job_failed"
    JOB_REQUEUED = "job_requeued"
    LEDGER_REPAIRED = "ledger_repaired"
    LEDGER_ANCHORED = "ledger_anchored"


_REQUIRED_DETAILS: dict[str, tuple[str, ...]] = {
    AuditKind.INFERENCE_REQUESTED: ("model_version", "context_hash", "ciphertext_hashes"),
}
_KIND_RE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")


# --- PHI guard ---------------------------------------------------------------------------------

_DENY_KEYS = frozenset(
    {
        "name", "patientname", "patientsname", "otherpatientnames", "patientmothersbirthname",
        "patientid", "otherpatientids", "issuerofpatientid", "mrn", "ssn",
        "birthdate", "patientbirthdate", "dob", "patientbirthtime",
        "address", "patientaddress", "phone", "patienttelephonenumbers",
        "accession", "accessionnumber", "studyid",
        "uid", "studyinstanceuid", "seriesinstanceuid", "sopinstanceuid",
        "studyuid", "seriesuid", "sopuid", "instanceuid",
        "referringphysicianname", "performingphysicianname", "operatorsname",
        "institutionname", "institutionaddress", "medicalrecordlocator",
    }
)  # fmt: skip
"""Detail keys refused outright (compared lower-case with ``_``/``-``/spaces removed)."""

# A UID: >= 4 numeric components, or >= 16 characters (2.25.<big integer>); standard UIDs under
# the DICOM root 1.2.840.10008 (SOP classes, transfer syntaxes) identify nobody and are allowed.
_UID_RE = re.compile(r"(?<![\w.])[0-2](?:\.(?:0|[1-9][0-9]*)){2,}(?![\w.])")
_PN_RE = re.compile(r"^[^\^=\s][^\^=]*\^[^\^=]*")
_MAX_STRING = 1024


def _looks_like_uid(text: str) -> bool:
    for m in _UID_RE.finditer(text):
        uid = m.group(0)
        if uid.startswith("1.2.840.10008."):
            continue
        if uid.count(".") >= 3 or len(uid) >= 16:
            return True
    return False


def _check_value(value: Any, where: str) -> None:
    if value is None or isinstance(value, bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise AuditDetailError(f"{where}: not a finite number")
        return
    if isinstance(value, str):
        if len(value) > _MAX_STRING:
            raise AuditDetailError(f"{where}: string longer than {_MAX_STRING} characters")
        if _looks_like_uid(value):
            raise AuditDetailError(f"{where}: looks like a raw DICOM UID; use a pseudonym")
        if _PN_RE.match(value):
            raise AuditDetailError(f"{where}: looks like a DICOM person name; use a pseudonym")
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_value(item, f"{where}[{i}]")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise AuditDetailError(f"{where}: keys must be strings")
            if _looks_like_uid(key) or _PN_RE.match(key):
                raise AuditDetailError(f"{where}: a key looks like a UID or person name")
            if re.sub(r"[\s_\-]", "", key).lower() in _DENY_KEYS:
                raise AuditDetailError(f"{where}.{key}: key is on the PHI deny-list")
            _check_value(item, f"{where}.{key}")
        return
    raise AuditDetailError(f"{where}: {type(value).__name__} is not a JSON value")


def check_details(kind: str, details: Mapping[str, Any]) -> None:
    """Refuse a kind or details that are malformed or could carry PHI.

    Raises
    ------
    AuditDetailError
        naming the offending key path (never echoing the value).
    """
    if not _KIND_RE.match(kind):
        raise AuditDetailError(f"kind {kind!r}: must be snake_case, 1-48 characters")
    if not isinstance(details, Mapping):
        raise AuditDetailError("details: must be a mapping")
    _check_value(details, "details")
    missing = [k for k in _REQUIRED_DETAILS.get(kind, ()) if k not in details]
    if missing:
        raise AuditDetailError(f"details: {kind} needs {', '.join(missing)}")


# --- chain primitives --------------------------------------------------------------------------


def entry_hash(v: int, seq: int, time: str, kind: str, details: Any, prev_hash: str) -> str:
    """SHA-256 (hex) of an entry's body: every field but ``hash`` and ``signature``."""
    return body_hash({"v": v, "seq": seq, "time": time, "kind": kind, "details": details,
                      "prev_hash": prev_hash})


@dataclass(frozen=True)
class AuditEntry:
    """One ledger entry, as stored."""

    seq: int
    time: str
    kind: str
    details: dict[str, Any]
    prev_hash: str
    hash: str
    signature: str
    v: int = FORMAT_VERSION

    def to_json(self) -> str:
        """The entry as one JSON line (without the newline)."""
        return json.dumps(
            {"v": self.v, "seq": self.seq, "time": self.time, "kind": self.kind,
             "details": self.details, "prev_hash": self.prev_hash, "hash": self.hash,
             "signature": self.signature},
            separators=(",", ":"), ensure_ascii=True, allow_nan=False,
        )

    @classmethod
    def from_json(cls, line: str) -> AuditEntry:
        """Parse one line; raises ``ValueError`` saying what is wrong with its shape."""
        obj = json.loads(line)
        if not isinstance(obj, dict):
            raise ValueError("not a JSON object")
        keys = set(obj)
        if keys != _ENTRY_KEYS:
            extra, missing = keys - _ENTRY_KEYS, _ENTRY_KEYS - keys
            raise ValueError(
                "wrong keys"
                + (f"; unexpected: {', '.join(sorted(extra))}" if extra else "")
                + (f"; missing: {', '.join(sorted(missing))}" if missing else "")
            )
        ints = (obj["v"], obj["seq"])
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in ints):
            raise ValueError("v and seq must be integers")
        if not all(isinstance(obj[k], str) for k in ("time", "kind", "prev_hash", "hash",
                                                        "signature")):
            raise ValueError("time, kind, prev_hash, hash, signature must be strings")
        if not isinstance(obj["details"], dict):
            raise ValueError("details must be an object")
        return cls(seq=obj["seq"], time=obj["time"], kind=obj["kind"], details=obj["details"],
                   prev_hash=obj["prev_hash"], hash=obj["hash"], signature=obj["signature"],
                   v=obj["v"])

    @property
    def tip(self) -> ChainHead:
        """The chain's head once this entry is its newest."""
        return ChainHead(self.seq, self.hash)

    def computed_hash(self) -> str:
        return entry_hash(self.v, self.seq, self.time, self.kind, self.details, self.prev_hash)

    def signature_valid(self, key: Ed25519PublicKey) -> bool:
        return signature_valid(key, SIGNATURE_DOMAIN, self.hash, self.signature)


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """Read a PEM (SubjectPublicKeyInfo) Ed25519 public key."""
    if not Path(path).exists():
        raise AuditError(
            f"{path}: no such public key file (the node publishes it beside the ledger when "
            "it writes the ledger's first entry; or pass --public-key)"
        )
    try:
        return _load_public_key(path)
    except ValueError as exc:
        raise AuditError(str(exc)) from None


class SignedHead(_SharedSignedHead):
    """Where the ledger ended when the node last appended, signed by the ledger's key.

    The one implementation is :class:`secure_infer.chain.SignedHead` (shared with the vendor's
    chain); this subclass only names the ledger's head domain. ``counter`` grows by one with
    every head the node signs for this ledger and never goes back (it equals ``seq`` unless the
    ledger was anchored after it already had entries), so of two genuine heads the later one
    is known. The signature covers
    ``HEAD_SIGNATURE_DOMAIN + SHA-256(canonical JSON of {v, seq, hash, counter})``.
    """

    DOMAIN: ClassVar[bytes] = HEAD_SIGNATURE_DOMAIN
    FORMAT: ClassVar[int] = FORMAT_VERSION


# --- writing -----------------------------------------------------------------------------------


class AuditLedger:
    """Appends signed, chained entries to one ledger file.

    Safe for concurrent use from threads (a lock) and processes (``flock`` on the ledger file):
    each append re-reads the tail under the lock, so two writers never fork the chain. With
    ``fsync`` (the default) an entry is on disk before :meth:`append` returns. A torn last line
    left by a crash mid-append (never acknowledged) is cut off and a ``ledger_repaired`` entry
    records how many bytes were dropped.

    After each entry a :class:`SignedHead` is written to ``<ledger>.head`` and to ``anchor`` (a
    file in another directory) when given. Before appending, the ledger is checked against
    its head and anchor: a ledger shorter than its anchor, or a head that is missing or not the
    node's, raises :class:`AuditError` (the node stops writing rather than sign over a cut
    ledger). A ledger that has entries but no anchor yet (anchoring was just configured, or
    the anchor was deleted) is anchored at its current end and a ``ledger_anchored`` entry
    records it, so the gap is visible in the chain itself.
    """

    def __init__(self, path: str | Path, private_key: Ed25519PrivateKey, fsync: bool = True,
                 anchor: str | Path | None = None):
        self.path = Path(path)
        self.anchor = Path(anchor) if anchor is not None else None
        self._key = private_key
        self._fsync = fsync
        self._lock = threading.Lock()
        self._listeners: list[Callable[[AuditEntry], None]] = []
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        if self.anchor is not None:
            self.anchor.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._publish_public_key()
        with self._locked() as fd:
            self._last(fd)  # checks head and anchor (and writes the first head of a new ledger)

    @classmethod
    def open(cls, path: str | Path, key_file: str | Path, fsync: bool = True,
             anchor: str | Path | None = None) -> AuditLedger:
        """Open (or create) ``path``, signing with the raw Ed25519 key in ``key_file``.

        The key file is created (32 random bytes, mode 0600) on first use.
        """
        raw = load_or_create_secret(Path(key_file), 32)
        return cls(path, Ed25519PrivateKey.from_private_bytes(raw), fsync=fsync, anchor=anchor)

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    @property
    def public_key_path(self) -> Path:
        return public_key_path(self.path)

    @property
    def head_path(self) -> Path:
        return head_path(self.path)

    def _publish_public_key(self) -> None:
        pub = self.public_key_path
        if not publish_public_key(pub, self.public_key, sync=self._fsync):
            raise AuditError(
                f"{pub}: published key differs from the signing key; the ledger was signed"
                " with another key (rotate by starting a new ledger file)"
            )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[int]:
        with self._lock:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o640)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield fd
            finally:
                os.close(fd)  # releases the flock

    def append(
        self,
        kind: str | AuditKind,
        details: Mapping[str, Any] | None = None,
        *,
        time: datetime | None = None,
    ) -> AuditEntry:
        """Add one entry; returns it once it is durable (with ``fsync``)."""
        kind = str(kind)
        given = dict(details or {})
        check_details(kind, given)
        plain: dict[str, Any] = json.loads(canonical_json(given))  # as verify will see them
        stamp = (
            time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if time is not None
            else _utc_now()
        )
        with self._locked() as fd:
            tip, counter = self._last(fd)
            entry = self._write(fd, tip, counter, stamp, kind, plain)
        for listener in self._listeners:
            try:
                listener(entry)
            except Exception:  # an exporter must never fail the step that audited
                log.exception("audit listener failed for entry seq %d", entry.seq)
        return entry

    def add_listener(self, listener: Callable[[AuditEntry], None]) -> None:
        """Call ``listener(entry)`` after each append, once the entry is durable (the ATNA
        export, :mod:`node.atna`); it must not block, and its errors are logged, not raised."""
        self._listeners.append(listener)

    def _last(self, fd: int) -> tuple[ChainHead, int]:
        """The head to append after and the newest head counter (under the lock).

        Repairs a torn last line first, and refuses a ledger that does not reach its anchor.
        """
        dropped = cut_torn_tail(fd, sync=self._fsync)
        tip, prev = self._tip(fd)
        counter = self._check_heads(tip, prev)
        if dropped:
            tip, counter = self._write(
                fd, tip, counter, _utc_now(), AuditKind.LEDGER_REPAIRED,
                {"dropped_bytes": dropped, "reason": "torn last line"}).tip, counter + 1
        if self.anchor is not None and not self.anchor.exists() and tip.seq > 0:
            tip, counter = self._write(
                fd, tip, counter, _utc_now(), AuditKind.LEDGER_ANCHORED,
                {"entries_before": tip.seq, "reason": "no anchor"}).tip, counter + 1
        return tip, counter

    def _tip(self, fd: int) -> tuple[ChainHead, str]:
        """The newest entry as a head, and its ``prev_hash``."""
        if os.fstat(fd).st_size == 0:
            return ChainHead(), GENESIS
        line, _ = read_last_line(fd)
        try:
            entry = AuditEntry.from_json(line.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise AuditError(
                f"{self.path}: last entry is damaged ({exc}); run 'blindread audit verify'"
            ) from None
        return ChainHead(entry.seq, entry.hash), entry.prev_hash

    def _check_heads(self, tip: ChainHead, prev_hash: str) -> int:
        """Check head and anchor against the ledger's end; return the newest counter.

        Either names the newest entry, or (a crash between the entry and the head) the one
        before it. A new, empty ledger gets its first head (seq 0) here.
        """
        counter = -1
        for where, path in (("signed head", self.head_path), ("anchor", self.anchor)):
            if path is None:
                continue
            head = SignedHead.read(path)
            if head is None:
                if where == "anchor" or tip.seq == 0:
                    continue  # a new ledger, or anchoring just configured (recorded)
                raise AuditError(f"{path}: {where} missing; run 'blindread audit verify'")
            if isinstance(head, str) and where == "signed head" and head.startswith("in the old"):
                continue  # written by an older version: replaced by the next head
            if isinstance(head, str) or not head.signature_valid(self.public_key):
                raise AuditError(f"{path}: {where} is not signed by this ledger's key;"
                                 " run 'blindread audit verify'")
            if head.at != tip and not (head.seq == tip.seq - 1 and head.hash == prev_hash):
                raise AuditError(
                    f"{self.path}: ledger ends at seq {tip.seq} but its {where} ({path}) says"
                    f" seq {head.seq}; refusing to append: run 'blindread audit verify'"
                )
            counter = max(counter, head.counter)
        if counter < 0 and tip.seq == 0:
            self._put_head(SignedHead.sign(self._key, tip, 0))  # the first head of a ledger
            counter = 0
        return counter

    def _put_head(self, head: SignedHead) -> None:
        """The ledger's own head first, then the anchor (so the anchor is never ahead)."""
        head.put(self.head_path, sync=self._fsync)
        if self.anchor is not None:
            head.put(self.anchor, sync=self._fsync)

    def _write(
        self, fd: int, after: ChainHead, counter: int, stamp: str, kind: str,
        details: dict[str, Any],
    ) -> AuditEntry:
        """Sign and append the entry that follows ``after``, then replace the signed head."""
        seq, prev = after.seq + 1, after.hash
        h = entry_hash(FORMAT_VERSION, seq, stamp, kind, details, prev)
        sig = sign_hash(self._key, SIGNATURE_DOMAIN, h)
        entry = AuditEntry(seq, stamp, kind, details, prev, h, sig)
        append_line(fd, (entry.to_json() + "\n").encode("ascii"), sync=self._fsync)
        self._put_head(SignedHead.sign(self._key, entry.tip, counter + 1))
        return entry


def open_ledger(cfg: NodeConfig, registry: CollectorRegistry | None = None) -> AuditLedger | None:
    """The ledger configured under ``audit:`` (``None`` when ``audit.enabled`` is false); with
    ``audit.atna.destinations`` its entries are also exported as ATNA messages (their counter
    registered in ``registry``, the node's metrics)."""
    if not cfg.audit.enabled:
        return None
    ledger = AuditLedger.open(cfg.audit_ledger, cfg.audit_key_file, fsync=cfg.audit.fsync,
                              anchor=cfg.audit_anchor)
    attach_exporter(ledger, cfg.audit.atna, cfg.node.name, registry)
    return ledger


def public_key_path(ledger: Path) -> Path:
    """Where the ledger's public key is published."""
    return ledger.with_name(ledger.name + ".pub")


def head_path(ledger: Path) -> Path:
    """Where the signed head (newest seq and hash) is kept beside the ledger."""
    return ledger.with_name(ledger.name + ".head")


# --- verifying ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of :func:`verify_ledger`.

    ``bad_line`` is the 1-based line of the first bad entry (``bad_seq`` the seq expected
    there); both are ``None`` when the ledger verifies. A fault of the head or the anchor is
    reported at the line after the last entry.
    """

    entries: int
    bad_line: int | None = None
    bad_seq: int | None = None
    reason: str = ""
    head_seq: int | None = None
    anchor_seq: int | None = None

    @property
    def ok(self) -> bool:
        return self.bad_line is None

    def describe(self) -> str:
        if self.ok:
            head = f", signed head at seq {self.head_seq}" if self.head_seq is not None else ""
            anchor = (f", anchored at seq {self.anchor_seq}" if self.anchor_seq is not None
                      else ", no anchor checked")
            return f"OK: {self.entries} entries, chain intact{head}{anchor}"
        return (
            f"TAMPERED: first bad entry at line {self.bad_line} (seq {self.bad_seq}):"
            f" {self.reason}; {self.entries} entries before it verify"
        )


def _link_reason(fault: LinkFault, got_seq: int, seq: int) -> str:
    """Why an entry does not follow the one before it, for :class:`VerifyReport`."""
    if fault is LinkFault.SEQ:
        return f"seq is {got_seq}, expected {seq} (entry deleted, inserted or moved)"
    if fault is LinkFault.PREV_HASH:
        return "prev_hash does not match the previous entry (deleted, inserted or moved)"
    return "content does not match its hash (entry edited)"


def verify_ledger(
    path: str | Path, key: Ed25519PublicKey, *, check_head: bool = True,
    anchor: str | Path | None = None,
) -> VerifyReport:
    """Check every entry: shape, seq, link to the previous hash, own hash, signature; then the
    signed head and, if given, the ``anchor`` kept in another directory (so truncation, a head
    rebuilt or rolled back, and an emptied ledger are caught). Stops at the FIRST bad entry.

    Streams the file (memory does not grow with the ledger). The head and anchor are read
    before the entries, so a node appending meanwhile cannot cause a false "cut off" report.
    """
    path = Path(path)
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise AuditError(f"{path}: cannot read ledger ({exc.strerror})") from None
    with fh:
        # A snapshot between appends (they hold LOCK_EX): the size of complete entries and
        # the heads that belong to them. The lock is released before the (long) check.
        fcntl.flock(fh.fileno(), fcntl.LOCK_SH)
        try:
            size = os.fstat(fh.fileno()).st_size
            head = SignedHead.read(head_path(path)) if check_head else None
            anch = SignedHead.read(Path(anchor)) if check_head and anchor is not None else None
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        wanted = {h.hash: None for h in (head, anch) if isinstance(h, SignedHead)}
        named: dict[str, int] = {GENESIS: 0} if GENESIS in wanted else {}
        tip, consumed = ChainHead(), 0
        for raw in fh:
            if consumed >= size:
                break  # appended after the snapshot
            raw = raw[: size - consumed]
            consumed += len(raw)
            seq = tip.seq + 1

            def bad(reason: str, seq: int = seq) -> VerifyReport:
                return VerifyReport(entries=seq - 1, bad_line=seq, bad_seq=seq, reason=reason)

            if not raw.endswith(b"\n"):
                return bad("last line is incomplete (truncated or torn write)")
            try:
                entry = AuditEntry.from_json(raw.decode("utf-8"))
            except (ValueError, UnicodeDecodeError) as exc:
                return bad(f"not a valid entry ({exc})")
            if entry.v != FORMAT_VERSION:
                return bad(f"unknown format version {entry.v}")
            faults = tip.faults(entry.seq, entry.prev_hash, entry.hash, entry.computed_hash())
            if faults:
                return bad(_link_reason(faults[0], entry.seq, seq))
            if not entry.signature_valid(key):
                return bad("signature invalid (forged entry or wrong public key)")
            if entry.hash in wanted:
                named[entry.hash] = seq
            tip = tip.then(entry.hash)
    n = tip.seq
    if not check_head:
        return VerifyReport(entries=n)
    end = (n, n + 1, n + 1)

    def at(h: SignedHead | str | None) -> int | None:
        return named.get(h.hash) if isinstance(h, SignedHead) else None

    fault = head_fault("signed head", head, at(head), n, key)
    if fault is None and anchor is not None:
        fault = head_fault(f"anchor ({anchor})", anch, at(anch), n, key)
        if fault is None:
            assert isinstance(head, SignedHead) and isinstance(anch, SignedHead)
            if anch.counter > head.counter or anch.seq > head.seq:
                fault = (f"signed head (seq {head.seq}, counter {head.counter}) is older than"
                         f" its anchor (seq {anch.seq}, counter {anch.counter}): head rolled back")
    if fault is not None:
        return VerifyReport(*end, fault)
    assert isinstance(head, SignedHead)
    return VerifyReport(entries=n, head_seq=head.seq,
                        anchor_seq=anch.seq if isinstance(anch, SignedHead) else None)


def export_since(path: str | Path, since: datetime) -> Iterator[str]:
    """Raw ledger lines (entries unchanged, still verifiable) with ``time >= since``."""
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    with Path(path).open("rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                break  # torn tail: not an entry
            try:
                entry = AuditEntry.from_json(raw.decode("utf-8"))
                when = datetime.fromisoformat(entry.time)
            except (ValueError, UnicodeDecodeError):
                continue
            if when >= since:
                yield raw.decode("utf-8").rstrip("\n")
