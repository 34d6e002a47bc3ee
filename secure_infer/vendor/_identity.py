"""The vendor's secret keys and the keyed hash that names a hospital in the chain and metrics.

Two secrets live under ``<state_dir>/keys`` (mode 0700), each created once with mode 0600:

* ``chain_ed25519.key`` - the raw 32-byte Ed25519 key that signs every chain entry and head;
* ``hospital_id.key`` - 32 random bytes keying HMAC-SHA256 of a certificate's CN.

Why a keyed hash and not a plain SHA-256 of the CN: hospital names are few and guessable, so an
unkeyed hash in a chain handed to an auditor, or in a metrics label, would name them to anyone
with a list. Under the key only the vendor can tell which hospital an entry belongs to (it
recomputes :meth:`HospitalIds.of` for a CN). The context store's directory names stay the
unkeyed hash (:func:`secure_infer.vendor._store.hospital_namespace`): they never leave the
vendor's disk and must survive a lost key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import stat
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from durable_io import atomic_write
from secure_infer.errors import InferenceError

__all__ = ["HospitalIds", "KeyFileError", "load_chain_key", "load_or_create_secret"]


class KeyFileError(InferenceError):
    """A vendor key file is unreadable, of the wrong size, or readable by others."""

    code = "key_file"


def load_or_create_secret(path: Path, nbytes: int = 32) -> bytes:
    """The secret in ``path``; created (random, mode 0600) on first use, refused if others can
    read it or its size is wrong."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(path, secrets.token_bytes(nbytes), mode=0o600)
    st = path.stat()
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{path}: key file is accessible by group/others (mode"
            f" {stat.S_IMODE(st.st_mode):04o}); run 'chmod 600 {path}'"
        )
    data = path.read_bytes()
    if len(data) != nbytes:
        raise KeyFileError(f"{path}: expected {nbytes} bytes, found {len(data)}")
    return data


def load_chain_key(key_dir: Path) -> Ed25519PrivateKey:
    """The chain's Ed25519 signing key (``<key_dir>/chain_ed25519.key``)."""
    raw = load_or_create_secret(key_dir / "chain_ed25519.key", 32)
    return Ed25519PrivateKey.from_private_bytes(raw)


class HospitalIds:
    """Keyed pseudonyms of hospital identities (certificate CNs)."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    @classmethod
    def load(cls, key_dir: Path) -> HospitalIds:
        return cls(load_or_create_secret(key_dir / "hospital_id.key", 32))

    def of(self, common_name: str) -> str:
        """32 hex digits (128 bits) of HMAC-SHA256(key, CN): the ``hospital`` of chain entries."""
        mac = hmac.new(self._key, common_name.encode("utf-8"), hashlib.sha256)
        return mac.hexdigest()[:32]

    def label(self, common_name: str) -> str:
        """The first 12 hex digits of :meth:`of`: a metrics label (bounded, still keyed)."""
        return self.of(common_name)[:12]


