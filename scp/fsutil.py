"""Durable file operations: temp file + fsync + atomic rename + directory fsync.

Hand-written because the standard library has no "durable rename": ``os.replace`` alone may be
lost (or leave an empty file) after a power cut unless the data and the directory entry are
both fsynced, in this order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["Bytes", "fsync_dir", "nbytes", "write_all"]

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
