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

Signing (one implementation for both records)
-----------------------------------------------
A signer signs :func:`signing_input`: a domain string naming the record and format version,
followed by the entry hash's 32 raw bytes (:func:`sign_hash`, :func:`signature_valid`). Each
record keeps the signature outside the hashed body, next to the hash. After each append the
record's newest ``(seq, hash)`` and a monotonic ``counter`` are signed as a :class:`SignedHead`
under a head domain of the record's own (a subclass sets :attr:`SignedHead.DOMAIN`), so an
entry's signature cannot be passed off as a head, and a head of one record is not valid for the
other. :func:`head_fault` says what is wrong with a head for a chain of ``n`` entries (missing:
truncation not ruled out; invalid signature; a seq beyond the end: entries cut off; older than
the end: rolled back). The audit ledger (``node.audit``) and the vendor's chain both use these,
with their own domains: ``blindread-audit-v1`` / ``blindread-audit-head-v1`` and
``blindread-vendor-chain-v2`` / ``blindread-vendor-chain-head-v2``.

The vendor's request chain
--------------------------
One JSON object per line, keys sorted (the line is the canonical JSON of the entry)::

    {"v": 2, "seq": 7, "prev_hash": "<entry_hash of seq 6 or 64 zeros>", "time": "2026-...Z",
     "job": "<job token>", "hospital": "<keyed hash of the client certificate's CN>",
     "model": "demo-lesion", "model_version": "1.0",
     "context_sha256": "...", "request_sha256": "...", "response_sha256": "...",
     "entry_hash": "<sha256 of the canonical JSON of every field but entry_hash, signature>",
     "signature": "<Ed25519 over blindread-vendor-chain-v2\\0 + entry_hash bytes>"}

``hospital`` is an HMAC-SHA256 of the certificate's CN under a key only the vendor holds
(``secure_infer.vendor._identity``): the vendor can say which entries one hospital caused, a
reader of the file without the key cannot tell hospitals' names (not even by trying a list).
Beside the file, ``chain.jsonl.pub`` (the public key, PEM) and ``chain.jsonl.head`` (the signed
head); optionally an anchor copy of the head in another directory. ``verify-chain`` checks every
entry's link, hash and signature and then the head: a chain cut after any entry (its head says
a later seq), entries reordered (links), an edited entry (hash) and a rebuilt entry or head
(signature) are each reported.

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
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Self

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from durable_io import atomic_write, write_all
from secure_infer.errors import InferenceError

__all__ = [
    "CHAIN_FORMAT",
    "GENESIS",
    "VENDOR_ENTRY_DOMAIN",
    "VENDOR_HEAD_DOMAIN",
    "ChainError",
    "ChainHead",
    "HashChain",
    "LinkFault",
    "SignedHead",
    "VendorHead",
    "append_line",
    "body_hash",
    "canonical_json",
    "cut_torn_tail",
    "entry_hash",
    "head_fault",
    "key_fingerprint",
    "load_public_key",
    "public_key_pem",
    "publish_public_key",
    "read_last_line",
    "sign_hash",
    "signature_valid",
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


# --- signing, one implementation for both records ---------------------------------------------

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX128 = re.compile(r"^[0-9a-f]{128}$")


def sign_hash(key: Ed25519PrivateKey, domain: bytes, hash_hex: str) -> str:
    """Ed25519 signature (hex) of :func:`signing_input` for ``domain`` and ``hash_hex``."""
    return key.sign(signing_input(domain, hash_hex)).hex()


def signature_valid(
    key: Ed25519PublicKey, domain: bytes, hash_hex: object, sig_hex: object
) -> bool:
    """Whether ``sig_hex`` is ``key``'s signature of ``hash_hex`` under ``domain``.

    Malformed values (not 64 / 128 lower-case hex digits) are simply invalid.
    """
    if not isinstance(hash_hex, str) or not isinstance(sig_hex, str):
        return False
    if not _HEX64.match(hash_hex) or not _HEX128.match(sig_hex):
        return False
    try:
        key.verify(bytes.fromhex(sig_hex), signing_input(domain, hash_hex))
    except InvalidSignature:
        return False
    return True


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    """The PEM (SubjectPublicKeyInfo) form a record publishes beside itself."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def publish_public_key(pub: Path, key: Ed25519PublicKey, *, sync: bool = True) -> bool:
    """Write ``key`` to ``pub`` (0644, durably) unless it is there; ``False`` if ``pub`` holds
    another key (the caller says what that means for its record: a key rotation needs a new
    file, never a silently replaced public key)."""
    pem = public_key_pem(key)
    if pub.exists():
        return pub.read_bytes() == pem
    atomic_write(pub, pem, mode=0o644, sync=sync)
    return True


def key_fingerprint(key: Ed25519PublicKey) -> str:
    """``SHA256:<hex>`` of the raw 32-byte public key (compare it with an off-host copy)."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "SHA256:" + hashlib.sha256(raw).hexdigest()


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """Read a PEM Ed25519 public key; ``ValueError`` naming the file if it is not one."""
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read public key ({type(exc).__name__})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: not an Ed25519 public key")
    return key


_HEAD_KEYS = frozenset({"v", "seq", "hash", "counter", "signature"})


@dataclass(frozen=True)
class SignedHead:
    """Where a record ended when its writer last appended, signed by the record's key.

    ``counter`` grows by one with every head the writer signs and never goes back, so of two
    genuine heads the later one is known. The signature covers ``DOMAIN + SHA-256(canonical
    JSON of {v, seq, hash, counter})``. Each record subclasses this only to set its own
    :attr:`DOMAIN` (``node.audit.SignedHead``, :class:`VendorHead`).
    """

    DOMAIN: ClassVar[bytes] = b""
    FORMAT: ClassVar[int] = 1

    seq: int
    hash: str
    counter: int
    signature: str
    v: int = 1

    def body(self) -> dict[str, Any]:
        return {"v": self.v, "seq": self.seq, "hash": self.hash, "counter": self.counter}

    def to_bytes(self) -> bytes:
        return canonical_json({**self.body(), "signature": self.signature}) + b"\n"

    @classmethod
    def sign(cls, key: Ed25519PrivateKey, at: ChainHead, counter: int) -> Self:
        if not cls.DOMAIN:
            raise TypeError("SignedHead is signed through a record's subclass (its DOMAIN)")
        body = {"v": cls.FORMAT, "seq": at.seq, "hash": at.hash, "counter": counter}
        return cls(at.seq, at.hash, counter, sign_hash(key, cls.DOMAIN, body_hash(body)),
                   cls.FORMAT)

    @classmethod
    def read(cls, path: Path) -> Self | str | None:
        """The head stored in ``path``; ``None`` if there is none, or what is wrong with it."""
        try:
            obj = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return "unreadable"
        if not isinstance(obj, dict):
            return "unreadable"
        if set(obj) != _HEAD_KEYS:
            if set(obj) == {"seq", "hash", "signature"}:
                return "in the old unsigned format (only the newest entry's signature)"
            return "unreadable (wrong keys)"
        ints = (obj["v"], obj["seq"], obj["counter"])
        if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in ints):
            return "unreadable (v, seq, counter must be integers)"
        if not isinstance(obj["hash"], str) or not isinstance(obj["signature"], str):
            return "unreadable (hash, signature must be strings)"
        return cls(obj["seq"], obj["hash"], obj["counter"], obj["signature"], obj["v"])

    def put(self, path: Path, *, sync: bool = True) -> None:
        """Replace the head stored in ``path`` (temp file + fsync + rename)."""
        atomic_write(path, self.to_bytes(), mode=0o640, sync=sync)

    def signature_valid(self, key: Ed25519PublicKey) -> bool:
        if self.v != self.FORMAT or not _HEX64.match(self.hash):
            return False
        return signature_valid(key, self.DOMAIN, body_hash(self.body()), self.signature)

    @property
    def at(self) -> ChainHead:
        return ChainHead(self.seq, self.hash)


def head_fault(
    what: str, head: SignedHead | str | None, named_at: int | None, n: int,
    key: Ed25519PublicKey, record: str = "ledger",
) -> str | None:
    """What is wrong with a signed head (a record's own, or its anchor) for ``n`` entries.

    ``named_at`` is the seq of the entry whose hash the head names (0 for genesis, ``None``
    if no entry has it). A head names the newest entry or, after a crash between the entry
    and its head, the one before it. ``record`` names the record in the reasons.
    """
    if head is None:
        return f"{what} file missing: truncation not ruled out"
    if isinstance(head, str):
        return f"{what} {head}"
    # The seq check first: an edited seq is named as such (the signature would fail too).
    if named_at is not None and named_at != head.seq:
        return f"{what} names entry seq {named_at} but says seq {head.seq}: {what} edited"
    if not head.signature_valid(key):
        return f"{what} has an invalid signature (rebuilt without the key?)"
    if head.seq > n:
        return (f"{record} ends at seq {n} but the {what} says seq {head.seq}:"
                " entries were cut off the end")
    if named_at is None:
        return f"{what} names no entry of this {record}"
    if head.seq < n - 1:
        return (f"{what} is at seq {head.seq} but the {record} has {n} entries:"
                f" the {what} was replaced by an older one")
    return None


# --- the vendor's request chain -----------------------------------------------------------------

CHAIN_FORMAT = 2
"""Format version of the vendor chain's entries (1: unsigned, without ``hospital``)."""
VENDOR_ENTRY_DOMAIN = b"blindread-vendor-chain-v2\x00"
VENDOR_HEAD_DOMAIN = b"blindread-vendor-chain-head-v2\x00"
_VENDOR_FAULT_ORDER = (LinkFault.PREV_HASH, LinkFault.SEQ, LinkFault.HASH)
_UNHASHED = frozenset({"entry_hash", "signature"})


class VendorHead(SignedHead):
    """The vendor chain's signed head (its own signature domain)."""

    DOMAIN: ClassVar[bytes] = VENDOR_HEAD_DOMAIN


def entry_hash(entry: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a vendor ``entry`` without ``entry_hash``/``signature``."""
    return body_hash({k: v for k, v in entry.items() if k not in _UNHASHED})


def _sidecar(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def verify_chain(
    path: Path,
    public_key: Ed25519PublicKey | None = None,
    *,
    anchor: Path | None = None,
) -> int:
    """Check every entry (link, hash, signature) and the signed head (and ``anchor``, if given);
    return the number of entries or raise :class:`ChainError` naming the first fault.

    ``public_key`` defaults to ``<path>.pub``. A head that says a later seq than the file has
    (the file was cut), a head that is missing, not signed by the key, or older than the file,
    are faults: a chain cannot be shortened without it being seen.
    """
    path = Path(path)
    if public_key is None:
        try:
            public_key = load_public_key(_sidecar(path, ".pub"))
        except ValueError as exc:
            raise ChainError(f"{exc}; signatures cannot be checked") from None
    head = VendorHead.read(_sidecar(path, ".head"))
    anch = VendorHead.read(anchor) if anchor is not None else None
    wanted = {h.hash for h in (head, anch) if isinstance(h, SignedHead)}
    named: dict[str, int] = {GENESIS: 0}
    n = 0
    for entry in _walk(path, public_key):
        n = int(entry["seq"])
        if entry["entry_hash"] in wanted:
            named[entry["entry_hash"]] = n

    def at(h: SignedHead | str | None) -> int | None:
        return named.get(h.hash) if isinstance(h, SignedHead) else None

    fault = head_fault("signed head", head, at(head), n, public_key, record="chain")
    if fault is None and anchor is not None:
        fault = head_fault(f"anchor ({anchor})", anch, at(anch), n, public_key, record="chain")
        if fault is None:
            assert isinstance(head, SignedHead) and isinstance(anch, SignedHead)
            if anch.counter > head.counter or anch.seq > head.seq:
                fault = (f"signed head (seq {head.seq}, counter {head.counter}) is older than"
                         f" its anchor (seq {anch.seq}, counter {anch.counter}): head rolled back")
    if fault is not None:
        raise ChainError(f"{path}: after {n} entries: {fault}")
    return n


def _walk(path: Path, public_key: Ed25519PublicKey | None) -> Iterator[dict[str, Any]]:
    """Each entry of a chain file in order, checked against the one before (ChainError).

    With ``public_key``, each entry's signature is checked too.
    """
    head = ChainHead()
    if not path.exists():
        return
    with path.open("r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                raise ChainError(f"{path}:{lineno}: not JSON") from None
            if not isinstance(entry, dict):
                raise ChainError(f"{path}:{lineno}: not a JSON object")
            if entry.get("v") != CHAIN_FORMAT:
                raise ChainError(
                    f"{path}:{lineno}: format version {entry.get('v', 1)!r}, expected"
                    f" {CHAIN_FORMAT} (a chain written before entries were signed: keep it"
                    " as it is, verify it with the release that wrote it, and start a new"
                    " chain file)"
                )
            seq = entry.get("seq")
            faults = head.faults(seq, entry.get("prev_hash"), entry.get("entry_hash"),
                                 entry_hash(entry))
            if faults:
                reasons = {
                    LinkFault.PREV_HASH: f"prev_hash does not link to entry {head.seq}"
                    " (an entry was deleted, inserted or moved)",
                    LinkFault.SEQ: f"seq {seq} != {head.seq + 1}",
                    LinkFault.HASH: "entry_hash does not match its content (entry edited)",
                }
                first = next(f for f in _VENDOR_FAULT_ORDER if f in faults)
                raise ChainError(f"{path}:{lineno}: {reasons[first]}")
            if public_key is not None and not signature_valid(
                public_key, VENDOR_ENTRY_DOMAIN, entry.get("entry_hash"), entry.get("signature")
            ):
                raise ChainError(
                    f"{path}:{lineno}: signature invalid (entry rebuilt without the key,"
                    " or the wrong public key)"
                )
            head = head.then(entry["entry_hash"])
            yield entry


class HashChain:
    """Thread-safe appender to the vendor's signed chain file (one process owns the file).

    Every entry is signed with ``key``; after each append the signed head is replaced (and
    the ``anchor`` copy, if configured, in a directory of its own). On open the file must
    reach its head: a chain that was cut while the vendor was down is refused
    (:class:`ChainError`) instead of being silently continued.
    """

    def __init__(
        self, path: Path, key: Ed25519PrivateKey, *, anchor: Path | None = None,
        sync: bool = True,
    ) -> None:
        self.path = path
        self.anchor = anchor
        self._key = key
        self._sync = sync
        self._lock = threading.Lock()
        self._jobs: dict[str, str] = {}  # job token -> request_sha256, for every entry
        path.parent.mkdir(parents=True, exist_ok=True)
        self._publish_public_key()
        self._tail, self._counter = self._recover()

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    @property
    def head_path(self) -> Path:
        return _sidecar(self.path, ".head")

    def _publish_public_key(self) -> None:
        pub = _sidecar(self.path, ".pub")
        if not publish_public_key(pub, self.public_key, sync=self._sync):
            raise ChainError(
                f"{pub}: published key differs from the chain's signing key; start a new"
                " chain file to rotate the key"
            )

    def _recover(self) -> tuple[ChainHead, int]:
        """Cut a torn tail, check every link and signature, check the head, index the jobs."""
        if self.path.exists():
            fd = os.open(self.path, os.O_RDWR)
            try:
                cut_torn_tail(fd)  # torn final write from a crash: never acknowledged
            finally:
                os.close(fd)
        tip, prev = ChainHead(), GENESIS
        for entry in _walk(self.path, self.public_key):
            job = entry.get("job")
            if isinstance(job, str):
                self._jobs.setdefault(job, str(entry.get("request_sha256")))
            prev = tip.hash
            tip = tip.then(str(entry["entry_hash"]))
        counter = -1
        for where, hp in (("signed head", self.head_path), ("anchor", self.anchor)):
            if hp is None:
                continue
            head = VendorHead.read(hp)
            if head is None:
                if tip.seq == 0 or where == "anchor":
                    continue  # a new chain, or anchoring just configured
                raise ChainError(f"{hp}: {where} missing; run 'vendor verify-chain'")
            if isinstance(head, str) or not head.signature_valid(self.public_key):
                raise ChainError(f"{hp}: {where} is not signed by this chain's key")
            # the head names the newest entry, or (crash between entry and head) the one before
            if head.at != tip and not (head.seq == tip.seq - 1 and head.hash == prev):
                raise ChainError(
                    f"{self.path}: chain ends at seq {tip.seq} but its {where} ({hp}) says"
                    f" seq {head.seq}; refusing to continue it: run 'vendor verify-chain'"
                )
            counter = max(counter, head.counter)
        counter += 1
        self._put_head(VendorHead.sign(self._key, tip, counter))
        return tip, counter

    def _put_head(self, head: SignedHead) -> None:
        head.put(self.head_path, sync=self._sync)  # own head first: the anchor is never ahead
        if self.anchor is not None:
            self.anchor.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            head.put(self.anchor, sync=self._sync)

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

    @property
    def seq(self) -> int:
        """Number of entries."""
        return self._tail.seq

    def append(
        self,
        *,
        job: str,
        hospital: str,
        model: str,
        model_version: str,
        context_sha256: str,
        request_sha256: str,
        response_sha256: str,
    ) -> dict[str, Any]:
        """Append one signed entry, fsync it, replace the signed head; return the entry."""
        if not _HEX_ID.match(hospital):
            raise ValueError("hospital must be a keyed hash (hex), never a raw name")
        with self._lock:
            entry: dict[str, Any] = {
                "v": CHAIN_FORMAT,
                "seq": self._tail.seq + 1,
                "prev_hash": self._tail.hash,
                "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "job": job,
                "hospital": hospital,
                "model": model,
                "model_version": model_version,
                "context_sha256": context_sha256,
                "request_sha256": request_sha256,
                "response_sha256": response_sha256,
            }
            entry["entry_hash"] = entry_hash(entry)
            entry["signature"] = sign_hash(self._key, VENDOR_ENTRY_DOMAIN, entry["entry_hash"])
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                append_line(fd, canonical_json(entry) + b"\n", sync=self._sync)
            finally:
                os.close(fd)
            self._tail = self._tail.then(entry["entry_hash"])
            self._counter += 1
            self._put_head(VendorHead.sign(self._key, self._tail, self._counter))
            self._jobs.setdefault(job, request_sha256)
            return entry


_HEX_ID = re.compile(r"^[0-9a-f]{16,64}$")
