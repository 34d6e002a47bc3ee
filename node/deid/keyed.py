"""Keyed derivations: replacement UIDs, the patient pseudonym and the per-patient date shift.

All three are HMAC-SHA256 under node keys (``node.keys`` files, 0600), so the same input always
gives the same output on this node (studies sent in several batches stay linked) while nobody
without the key can link an output back to an input, not even by hashing candidate values.
Each derivation uses its own label so outputs of one cannot be replayed as another.
"""

from __future__ import annotations

import base64
import hmac
import secrets
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from node.keys import load_or_create_secret

__all__ = ["DeidKeys", "UidMapper", "date_shift_days", "patient_pseudonym"]

HMAC_KEY_FILE = "deid-hmac.key"
DATE_KEY_FILE = "deid-dateshift.key"

MIN_SHIFT_DAYS = 365
MAX_SHIFT_DAYS = 3650


@dataclass(frozen=True)
class DeidKeys:
    """The two secrets de-identification needs (32 random bytes each)."""

    hmac_key: bytes = field(repr=False)
    date_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.hmac_key) < 16 or len(self.date_key) < 16:
            raise ValueError("de-identification keys must be at least 16 bytes")

    @classmethod
    def load_or_create(cls, key_dir: Path) -> DeidKeys:
        """Read the node's key files, creating them (0600) on first run."""
        return cls(
            hmac_key=load_or_create_secret(key_dir / HMAC_KEY_FILE),
            date_key=load_or_create_secret(key_dir / DATE_KEY_FILE),
        )

    @classmethod
    def ephemeral(cls) -> DeidKeys:
        """Fresh random keys: consistent within one process, unlinkable across runs."""
        return cls(secrets.token_bytes(32), secrets.token_bytes(32))


def _mac(key: bytes, label: str, value: str) -> bytes:
    return hmac.digest(key, f"{label}\x00{value}".encode(), "sha256")


class UidMapper:
    """Maps an input UID to a ``2.25.<uuid>`` UID derived from HMAC(key, uid).

    The UUID is a version 8 (custom) UUID built from the first 128 bits of the MAC, which keeps
    the result a valid PS3.5 B.2 UUID-derived UID (at most 44 characters). Results are cached;
    ``seen`` lists the mappings produced so callers can audit them (``--map-out``).
    """

    def __init__(self, key: bytes, max_cache: int = 200_000) -> None:
        self._key = key
        self._cache: dict[str, str] = {}
        self._max = max_cache

    def __call__(self, uid: str) -> str:
        uid = uid.strip("\x00 ")
        new = self._cache.get(uid)
        if new is None:
            raw = bytearray(_mac(self._key, "uid", uid)[:16])
            raw[6] = (raw[6] & 0x0F) | 0x80  # version 8
            raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
            new = f"2.25.{uuid.UUID(bytes=bytes(raw)).int}"
            if len(self._cache) >= self._max:
                self._cache.clear()
            self._cache[uid] = new
        return new


def patient_pseudonym(key: bytes, patient_id: str) -> str:
    """The replacement Patient ID / Patient's Name: ``BR`` + 20 upper-case base32 characters."""
    mac = _mac(key, "patient", patient_id.strip())
    return "BR" + base64.b32encode(mac[:15]).decode("ascii")[:20]


def date_shift_days(key: bytes, patient_id: str) -> int:
    """Whole days (negative: into the past) by which this patient's dates are shifted.

    Whole days keep every interval exact, including between a date alone (birth date) and a
    date+time pair, and keep times of day valid without re-pairing DA/TM attributes.
    """
    mac = _mac(key, "dateshift", patient_id.strip())
    span = MAX_SHIFT_DAYS - MIN_SHIFT_DAYS + 1
    return -(MIN_SHIFT_DAYS + int.from_bytes(mac[:8], "big") % span)
