"""The identifier vault: original identifying attributes of each study, encrypted at rest.

Rows are addressed by the study's keyed pseudonym (``st-...``) and hold one AES-256-GCM sealed
JSON object (``cryptography``'s ``AESGCM``; random 96-bit nonce per write; the pseudonym is the
associated data, so a row copied under another pseudonym fails to decrypt). The key is a 0600 file
created on first use (:func:`node.keys.load_or_create_secret`). SQLite runs in WAL mode so the
node's workers can read while one writes.

Only the node reads the vault, to put a result back into the original study
(:meth:`IdentifierVault.relink_dataset`). Retention: :meth:`IdentifierVault.purge` (``blindread
vault purge --older-than DAYS``). Key rotation: :meth:`IdentifierVault.rotate_key` re-encrypts
every row in one transaction (see docs/deid.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydicom.dataset import Dataset

from node.errors import NodeError
from node.keys import load_or_create_secret

__all__ = [
    "RELINK_KEYWORDS",
    "VAULT_KEYWORDS",
    "VAULT_KEY_FILE",
    "IdentifierVault",
    "VaultError",
    "VaultRecord",
]

VAULT_KEY_FILE = "vault.key"

RELINK_KEYWORDS = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "IssuerOfPatientID",
    "AccessionNumber",
    "StudyInstanceUID",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "ReferringPhysicianName",
)
"""Patient and study attributes written back into a result (``relink_dataset``)."""

VAULT_KEYWORDS = (*RELINK_KEYWORDS, "OtherPatientIDs")
"""What de-identification keeps here, encrypted: the re-link attributes, plus Other Patient IDs
for the record (not written back into results)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vault (
    study_pseudonym TEXT PRIMARY KEY,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    key_id TEXT NOT NULL,
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS vault_updated ON vault(updated);
"""


class VaultError(NodeError):
    """A vault row is missing, was sealed with another key, or was tampered with."""


class VaultRecord(dict[str, str]):
    """The original identifying attributes of one study (keyword -> value)."""


def _key_id(key: bytes) -> str:
    return hashlib.sha256(b"blindread-vault-key-id\x00" + key).hexdigest()[:16]


class IdentifierVault:
    """Encrypted store of original study identifiers, addressed by study pseudonym.

    Parameters
    ----------
    path
        SQLite file (created with mode 0600 in a 0700 directory if missing).
    key
        32-byte AES-256 key; see :meth:`open` to load it from the node's key directory.
    """

    def __init__(self, path: Path, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("vault key must be 32 bytes (AES-256)")
        self.path = Path(path)
        self._aead = AESGCM(key)
        self._key_id = _key_id(key)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        # One connection shared by the node's worker threads, serialized by a lock.
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            self.path, timeout=30, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    @classmethod
    def open(cls, state_dir: Path, key_dir: Path) -> IdentifierVault:
        """The node's vault: ``<state_dir>/vault.sqlite`` with ``<key_dir>/vault.key``."""
        return cls(state_dir / "vault.sqlite", load_or_create_secret(key_dir / VAULT_KEY_FILE))

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    def __enter__(self) -> IdentifierVault:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- write / read

    def _seal(self, study_pseudonym: str, record: Mapping[str, str]) -> tuple[bytes, bytes]:
        nonce = os.urandom(12)
        plain = json.dumps(dict(record), sort_keys=True, ensure_ascii=False).encode("utf-8")
        return nonce, self._aead.encrypt(nonce, plain, study_pseudonym.encode("utf-8"))

    def store(self, study_pseudonym: str, identifiers: Mapping[str, str]) -> None:
        """Seal and store (or merge into) the study's identifying attributes.

        Instances of one study arrive one by one; values already stored are kept and new
        keywords are added, so the first instance's identity is never silently replaced.
        """
        now = time.time()
        with self._tx():
            existing = self._load(study_pseudonym)
            merged = {**{k: str(v) for k, v in identifiers.items()}, **(existing or {})}
            if existing is not None and merged == existing:
                return
            nonce, ct = self._seal(study_pseudonym, merged)
            self._db.execute(
                "INSERT INTO vault(study_pseudonym, created, updated, key_id, nonce, ciphertext)"
                " VALUES (?,?,?,?,?,?) ON CONFLICT(study_pseudonym) DO UPDATE SET"
                " updated=excluded.updated, key_id=excluded.key_id, nonce=excluded.nonce,"
                " ciphertext=excluded.ciphertext",
                (study_pseudonym, now, now, self._key_id, nonce, ct),
            )

    def _load(self, study_pseudonym: str) -> dict[str, str] | None:
        row = self._db.execute(
            "SELECT key_id, nonce, ciphertext FROM vault WHERE study_pseudonym=?",
            (study_pseudonym,),
        ).fetchone()
        if row is None:
            return None
        key_id, nonce, ct = row
        if key_id != self._key_id:
            raise VaultError(
                f"vault row {study_pseudonym} was sealed with key {key_id}, not the current key"
                f" {self._key_id}; finish the key rotation (docs/deid.md)"
            )
        try:
            plain = self._aead.decrypt(nonce, ct, study_pseudonym.encode("utf-8"))
        except InvalidTag:
            raise VaultError(f"vault row {study_pseudonym} failed authentication") from None
        data = json.loads(plain)
        return {str(k): str(v) for k, v in data.items()}

    def relink(self, study_pseudonym: str) -> VaultRecord:
        """The original identifying attributes of a study; :class:`VaultError` if unknown."""
        with self._lock:
            data = self._load(study_pseudonym)
        if data is None:
            raise VaultError(f"no vault entry for study {study_pseudonym}")
        return VaultRecord(data)

    def relink_dataset(self, study_pseudonym: str, ds: Dataset) -> Dataset:
        """Put a result dataset (e.g. the AI SR) back into the original study, in place.

        Patient and study attributes are replaced by the stored originals, so a PACS files the
        result under the original patient and Study Instance UID. The result keeps its own
        Series/SOP Instance UIDs.
        """
        record = self.relink(study_pseudonym)
        for kw in RELINK_KEYWORDS:
            if kw in record:
                setattr(ds, kw, record[kw])
            elif kw in ds:
                delattr(ds, kw)
        return ds

    def __contains__(self, study_pseudonym: object) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM vault WHERE study_pseudonym=?", (str(study_pseudonym),)
            ).fetchone()
        return row is not None

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM vault").fetchone()[0])

    # ---------------------------------------------------------------- maintenance

    def purge(self, older_than_days: float, now: float | None = None) -> int:
        """Delete rows not updated for ``older_than_days``; returns how many were deleted."""
        if older_than_days < 0:
            raise ValueError("older_than_days must be >= 0")
        cutoff = (time.time() if now is None else now) - older_than_days * 86400
        with self._tx():
            cur = self._db.execute("DELETE FROM vault WHERE updated < ?", (cutoff,))
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return int(cur.rowcount)

    def rotate_key(self, new_key: bytes) -> int:
        """Re-encrypt every row under ``new_key`` in one transaction; returns rows rotated.

        After it returns, the old key is no longer needed (keep it until the new key file is
        in place; see docs/deid.md). A crash before commit leaves every row under the old key.
        """
        if len(new_key) != 32:
            raise ValueError("vault key must be 32 bytes (AES-256)")
        new_aead, new_id = AESGCM(new_key), _key_id(new_key)
        count = 0
        with self._tx():
            rows = self._db.execute("SELECT study_pseudonym FROM vault").fetchall()
            for (pseudonym,) in rows:
                data = self._load(pseudonym)
                assert data is not None
                nonce = os.urandom(12)
                plain = json.dumps(data, sort_keys=True, ensure_ascii=False).encode("utf-8")
                ct = new_aead.encrypt(nonce, plain, pseudonym.encode("utf-8"))
                self._db.execute(
                    "UPDATE vault SET key_id=?, nonce=?, ciphertext=? WHERE study_pseudonym=?",
                    (new_id, nonce, ct, pseudonym),
                )
                count += 1
        self._aead, self._key_id = new_aead, new_id
        return count

    def _tx(self) -> _Transaction:
        return _Transaction(self._db, self._lock)


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``/``ROLLBACK`` (writers serialize, readers continue)."""

    def __init__(self, db: sqlite3.Connection, lock: threading.RLock) -> None:
        self._db = db
        self._lock = lock

    def __enter__(self) -> None:
        self._lock.acquire()
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._lock.release()
            raise

    def __exit__(self, exc_type: object, *exc: object) -> None:
        try:
            self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")
        finally:
            self._lock.release()
