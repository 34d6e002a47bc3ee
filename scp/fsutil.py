"""Durable file operations: temp file + fsync + atomic rename + directory fsync.

Hand-written because the standard library has no "durable rename": ``os.replace`` alone may be
lost (or leave an empty file) after a power cut unless the data and the directory entry are
both fsynced, in this order.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["fsync_dir", "write_file"]


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (creations, renames) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes | memoryview, *, sync: bool = True) -> None:
    """Create ``path`` (must not exist) holding ``data``, fsynced when ``sync``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
