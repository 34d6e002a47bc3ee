"""The one hash-chain format, and the vendor's append-only chain of inference requests.

Two records are hash chains: the hospital's signed audit ledger (``node.audit``) and the
vendor's request chain (this module's :class:`HashChain`). Both are built from the pieces
below, so they cannot drift apart and an auditor re-implements one set of rules:

* a file holds one JSON entry per line; each entry carries its ``seq`` (1, 2, ...), the
  ``prev_hash`` of the entry before it (:data:`GENESIS`, 64 zeros, for the first) and its own
  hash, the SHA-256 hex of :func:`canonical_json` of its body (:func:`body_hash`);
* :class:`ChainHead` is where a chain ends (``seq`` and hash of its newest entry); its
  :meth:`~ChainHead.faults` says how an entry fails to link after it (:class:`LinkFault`), so
  each verifier reports the first bad entry in its own words;
* an append is one complete line, written and fsync'd before it is acknowledged
  (:func:`append_line`); a torn last line left by a crash was never acknowledged and is cut
  off on open (:func:`cut_torn_tail`); :func:`read_last_line` finds the newest entry without
  reading the whole file.

What each record puts in its body, what it calls its hash field, in which order it writes
fields and whether it signs, is its own (docs/audit.md for the ledger, below for the vendor).

Signing
-------
A signer signs :func:`signing_input`: a domain string naming the record and format version,
followed by the entry hash's 32 raw bytes. The audit ledger signs it with Ed25519 under
``b"blindread-audit-v1\\0"`` and keeps the signature outside the hashed body, next to the hash;
the vendor's chain can sign its ``entry_hash`` the same way under a domain of its own without
changing anything else here (not done yet: issue #15).

The vendor's request chain
--------------------------
One JSON object per line, keys sorted (the line is the canonical JSON of the entry)::

    {"seq": 7, "prev_hash": "<entry_hash of seq 6 or 64 zeros>", "time": "2026-...Z",
     "job": "<job token>", "model": "demo-lesion", "model_version": "1.0",
     "context_sha256": "...", "request_sha256": "...", "response_sha256": "...",
     "entry_hash": "<sha256 of the canonical JSON of every other field>"}

``request_sha256`` / ``response_sha256`` are the SHA-256 of the framed bodies
(:func:`secure_infer.framing.frames_sha256`), so the hospital's audit ledger, which records the
same values for what it sent and received, can be cross-checked against this file entry by entry
(joined on the job token). Nothing in it identifies a patient or a study.

Each append is fsync'd before the response leaves, so an acknowledged request is never missing;
a torn last line left by a crash is cut off on open (its request was never answered).

On open the chain is read once and every job token is indexed with its ``request_sha256``
(:meth:`HashChain.request_of`; about 250 bytes of memory per entry), so the vendor refuses a job
token sent again with another request even after a restart.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from durable_io import write_all
from secure_infer.errors import InferenceError

__all__ = [
    "GENESIS",
    "ChainError",
    "ChainHead",
    "HashChain",
    "LinkFault",
    "append_line",
    "body_hash",
    "canonical_json",
    "cut_torn_tail",
    "entry_hash",
    "read_last_line",
    "signing_input",
    "verify_chain",
]

GENESIS = "0" * 64
"""The ``prev_hash`` of a chain's first entry."""


class ChainError(InferenceError):
    """The chain file is broken (a link or an entry hash does not match)."""

    code = "broken_chain"


# --- the format both chains share ---------------------------------------------------------------


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no spaces, ASCII only, no NaN: the bytes that are hashed.

    Raises ``ValueError`` for NaN or infinity (they have no JSON form to agree on).
    """
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def body_hash(body: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of an entry's body: every field its hash covers, and no other."""
    return hashlib.sha256(canonical_json(body)).hexdigest()


def signing_input(domain: bytes, hash_hex: str) -> bytes:
    """What a signer signs for an entry: ``domain`` then the raw bytes of its hash.

    The domain keeps a signature of one record (or format version) from being valid for
    another; a malformed ``hash_hex`` raises ``ValueError``.
    """
    return domain + bytes.fromhex(hash_hex)


class LinkFault(enum.Enum):
    """How an entry fails to follow a :class:`ChainHead`."""

    SEQ = "seq"
    """Its ``seq`` is not the next number: an entry was deleted, inserted or moved."""
    PREV_HASH = "prev_hash"
    """Its ``prev_hash`` does not name the newest entry's hash: deleted, inserted or moved."""
    HASH = "hash"
    """Its stored hash is not the hash of its body: the entry was edited."""


@dataclass(frozen=True)
class ChainHead:
    """Where a chain ends: the ``seq`` and hash of its newest entry (empty: 0 and genesis)."""

    seq: int = 0
    hash: str = GENESIS

    def faults(
        self, seq: object, prev_hash: object, stored_hash: object, computed_hash: str
    ) -> tuple[LinkFault, ...]:
        """Every way an entry with these fields fails to follow this head (empty: it links).

        ``computed_hash`` is :func:`body_hash` of the entry's body as read. All faults are
        returned, in :class:`LinkFault` order, so a verifier chooses which one it names first.
        """
        found = []
        if seq != self.seq + 1:
            found.append(LinkFault.SEQ)
        if prev_hash != self.hash:
            found.append(LinkFault.PREV_HASH)
        if stored_hash != computed_hash:
            found.append(LinkFault.HASH)
        return tuple(found)

    def then(self, entry_hash: str) -> ChainHead:
        """The head after appending the next entry, whose hash is ``entry_hash``."""
        return ChainHead(self.seq + 1, entry_hash)


def read_last_line(fd: int) -> tuple[bytes, int]:
    """The file's last line (without its newline) and the offset where it starts.

    Reads backwards from the end in blocks, so opening a long chain costs one block.
    """
    size = os.fstat(fd).st_size
    if size == 0:
        return b"", 0
    buf = b""
    pos = size
    while pos > 0:
        step = min(4096, pos)
        pos -= step
        buf = os.pread(fd, step, pos) + buf
        body = buf[:-1] if buf.endswith(b"\n") else buf
        nl = body.rfind(b"\n")
        if nl >= 0:
            return body[nl + 1 :], pos + nl + 1
    body = buf[:-1] if buf.endswith(b"\n") else buf
    return body, 0


def cut_torn_tail(fd: int, *, sync: bool = True) -> int:
    """Cut off a last line without its newline (a crash mid-append); return the bytes dropped.

    Such an entry was never acknowledged (an append returns only once its whole line is
    written), so dropping it loses nothing a peer was told. ``fd`` must be open for writing.
    """
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return 0
    _, start = read_last_line(fd)
    os.ftruncate(fd, start)
    if sync:
        os.fsync(fd)
    return size - start


def append_line(fd: int, line: bytes, *, sync: bool = True) -> None:
    """Write one entry's complete line (ending in a newline) to ``fd`` and fsync it.

    ``fd`` is open with ``O_APPEND``; short writes are retried, so the line lands whole.
    """
    write_all(fd, line)
    if sync:
        os.fsync(fd)


# --- the vendor's request chain -----------------------------------------------------------------

_VENDOR_FAULT_ORDER = (LinkFault.PREV_HASH, LinkFault.SEQ, LinkFault.HASH)


def entry_hash(entry: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a vendor ``entry`` without its ``entry_hash`` field."""
    return body_hash({k: v for k, v in entry.items() if k != "entry_hash"})


def verify_chain(path: Path) -> int:
    """Check every link of a chain file; return the number of entries or raise ChainError."""
    return sum(1 for _entry in _walk(path))


def _walk(path: Path) -> Iterator[dict[str, Any]]:
    """Each entry of a chain file in order, checked against the one before (ChainError)."""
    head = ChainHead()
    if not path.exists():
        return
    with path.open("r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                raise ChainError(f"{path}:{lineno}: not JSON") from None
            seq = entry.get("seq")
            faults = head.faults(seq, entry.get("prev_hash"), entry.get("entry_hash"),
                                 entry_hash(entry))
            if faults:
                reasons = {
                    LinkFault.PREV_HASH: f"prev_hash does not link to entry {head.seq}",
                    LinkFault.SEQ: f"seq {seq} != {head.seq + 1}",
                    LinkFault.HASH: "entry_hash does not match its content",
                }
                first = next(f for f in _VENDOR_FAULT_ORDER if f in faults)
                raise ChainError(f"{path}:{lineno}: {reasons[first]}")
            head = head.then(entry["entry_hash"])
            yield entry


class HashChain:
    """Thread-safe appender to a chain file (one process owns the file)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._jobs: dict[str, str] = {}  # job token -> request_sha256, for every entry
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tail = self._recover()

    def _recover(self) -> ChainHead:
        """Cut a torn tail, check every link, and index the job tokens already answered."""
        if not self.path.exists():
            return ChainHead()
        fd = os.open(self.path, os.O_RDWR)
        try:
            cut_torn_tail(fd)  # torn final write from a crash: never acknowledged
        finally:
            os.close(fd)
        head = ChainHead()
        for entry in _walk(self.path):
            job = entry.get("job")
            if isinstance(job, str):
                self._jobs.setdefault(job, str(entry.get("request_sha256")))
            head = head.then(str(entry["entry_hash"]))
        return head

    def request_of(self, job: str) -> str | None:
        """The ``request_sha256`` of the (first) entry for ``job``; ``None`` if never answered.

        Loaded from the file on open, so it survives a restart: the vendor's replay protection
        (one request per job token) needs no state besides the chain.
        """
        with self._lock:
            return self._jobs.get(job)

    @property
    def head(self) -> str:
        """Hash of the newest entry (64 zeros while empty)."""
        return self._tail.hash

    def append(
        self,
        *,
        job: str,
        model: str,
        model_version: str,
        context_sha256: str,
        request_sha256: str,
        response_sha256: str,
    ) -> dict[str, Any]:
        """Append one entry, fsync it, and return it (with its ``entry_hash``)."""
        with self._lock:
            entry: dict[str, Any] = {
                "seq": self._tail.seq + 1,
                "prev_hash": self._tail.hash,
                "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "job": job,
                "model": model,
                "model_version": model_version,
                "context_sha256": context_sha256,
                "request_sha256": request_sha256,
                "response_sha256": response_sha256,
            }
            entry["entry_hash"] = entry_hash(entry)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                append_line(fd, canonical_json(entry) + b"\n")
            finally:
                os.close(fd)
            self._tail = self._tail.then(entry["entry_hash"])
            self._jobs.setdefault(job, request_sha256)
            return entry
