"""Durable store of hospitals' public CKKS contexts, content-addressed by SHA-256.

Layout: ``<state_dir>/contexts/<hospital>/<sha256>.ctx`` where ``<hospital>`` is the SHA-256 of
the client certificate's subject CN, so one hospital can neither use nor probe another's
contexts, and a renewed certificate with the same CN keeps its contexts. Files are written with
:func:`durable_io.atomic_write` (temp + fsync + rename + directory fsync) so a crash never leaves
a half-written context under its final name, and are re-hashed when read so a damaged file is
dropped, never evaluated with.
Only contexts that passed :meth:`VendorModel.load_context` (no secret key, >= 128-bit
parameters) are ever written.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from durable_io import atomic_write

__all__ = ["ContextStore", "hospital_namespace"]

log = logging.getLogger(__name__)


def hospital_namespace(common_name: str) -> str:
    """Directory name for a hospital: hex SHA-256 of its certificate CN."""
    return hashlib.sha256(common_name.encode("utf-8")).hexdigest()


class ContextStore:
    """Contexts on disk under ``root``; safe to call from several threads."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _path(self, namespace: str, sha: str) -> Path:
        return self.root / namespace / f"{sha}.ctx"

    def has(self, namespace: str, sha: str) -> bool:
        """Whether this hospital's context ``sha`` is stored."""
        return self._path(namespace, sha).is_file()

    def count(self, namespace: str) -> int:
        """How many contexts this hospital keeps stored (its quota counts these)."""
        d = self.root / namespace
        return sum(1 for _ in d.glob("*.ctx")) if d.is_dir() else 0

    def size(self, namespace: str, sha: str) -> int | None:
        """Size in bytes, or None when absent."""
        try:
            return self._path(namespace, sha).stat().st_size
        except FileNotFoundError:
            return None

    def put(self, namespace: str, data: bytes) -> tuple[str, bool]:
        """Store ``data``; returns ``(sha256, created)``. Idempotent."""
        sha = hashlib.sha256(data).hexdigest()
        final = self._path(namespace, sha)
        if final.is_file():
            return sha, False
        final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(final, data, mode=0o600)
        return sha, True

    def get(self, namespace: str, sha: str) -> bytes | None:
        """The stored bytes, or None when absent or damaged (a damaged file is removed)."""
        path = self._path(namespace, sha)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if hashlib.sha256(data).hexdigest() != sha:
            log.error(
                "context %s.. in namespace %s.. is damaged; removing it", sha[:12], namespace[:12]
            )
            path.unlink(missing_ok=True)
            return None
        return data
