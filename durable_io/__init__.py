"""Durable file operations: temp file + fsync + atomic rename + directory fsync.

Hand-written because the standard library has no "durable rename": ``os.replace`` alone may be
lost (or leave an empty file) after a power cut unless the data and the directory entry are
both fsynced, in this order.

The one leaf every room shares (``scp``'s spool, ``secure_infer``'s keys, certificates and
context store, ``node``'s job steps, SRs, reports and ledger): standard library only, it
imports nothing of the project, so the vendor's install and the DICOM package need nothing of
each other to write files safely.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from pathlib import Path

__all__ = ["Bytes", "atomic_write", "fsync_dir", "nbytes", "write_all"]

Bytes = bytes | bytearray | memoryview | Sequence[bytes | bytearray | memoryview]
"""One buffer, or several written in order (so a header and a body need no concatenation)."""


def _parts(data: Bytes) -> list[memoryview]:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return [memoryview(data).cast("B")]
    return [memoryview(p).cast("B") for p in data]


def nbytes(data: Bytes) -> int:
    """Total length of ``data``."""
    return sum(len(p) for p in _parts(data))


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (creations, renames) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: Bytes) -> None:
    """Write every byte of ``data`` to ``fd`` (``writev``; retries short writes)."""
    parts = [p for p in _parts(data) if len(p)]
    while parts:
        n = os.writev(fd, parts)
        while parts and n >= len(parts[0]):  # drop what was written, keep the rest
            n -= len(parts[0])
            parts.pop(0)
        if parts:
            parts[0] = parts[0][n:]


def atomic_write(path: Path, data: Bytes, *, mode: int = 0o600, sync: bool = True) -> None:
    """Replace ``path`` with ``data`` so a crash leaves the old file or the whole new one.

    Temp file beside ``path`` (created with ``mode``, subject to the umask), write, fsync,
    rename over ``path``, fsync the directory; with ``sync=False`` the same without the fsyncs.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            write_all(fd, data)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync:
        fsync_dir(path.parent)
