"""Byte (de)serialization of SEAL objects through ``tenseal.sealapi``.

sealapi exposes ``save``/``load`` only to file paths (its ``Serializable`` seeded/compressed
return types are not bound to Python, measured on tenseal 0.3.18), so we go through a private
0700 temp directory, preferably on tmpfs (``/dev/shm``). SEAL writes its default compression
(zstd) and validates on load (``is_valid_for``), which we rely on for tamper checks.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Any

__all__ = ["load_into", "save_bytes"]

_lock = threading.Lock()
_dir: Path | None = None


def _tmpdir() -> Path:
    global _dir
    with _lock:
        if _dir is None or not _dir.is_dir():
            # tmpfs keeps ciphertext bytes off disk; mkdtemp makes a private 0700 directory.
            shm = "/dev/shm"  # noqa: S108
            base = shm if os.access(shm, os.W_OK) else None
            _dir = Path(tempfile.mkdtemp(prefix="blindread-seal-", dir=base))
        return _dir


def save_bytes(obj: Any) -> bytes:
    """Serialize a SEAL object (Ciphertext, keys, EncryptionParameters) to bytes."""
    fd, name = tempfile.mkstemp(dir=_tmpdir())
    os.close(fd)
    try:
        obj.save(name)
        return Path(name).read_bytes()
    finally:
        os.unlink(name)


def load_into(obj: Any, data: bytes, context: Any | None = None) -> None:
    """Load bytes into ``obj`` (validated against ``context`` when given); raises on bad data."""
    fd, name = tempfile.mkstemp(dir=_tmpdir())
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if context is None:
            obj.load(name)
        else:
            obj.load(context, name)
    finally:
        os.unlink(name)
