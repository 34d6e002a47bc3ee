"""Secret key files: created once with mode 0600, refused when others can read them.

Every secret the node holds (pseudonym HMAC key, vault AES key, audit signing key, CKKS secret
key) is a file under ``node.key_dir``. Creation uses ``O_EXCL`` and fsync so two processes
starting at once cannot end up with different keys, and a crash cannot leave a half-written key.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from durable_io import fsync_dir, write_all
from node.errors import NodeError

__all__ = ["KeyFileError", "load_or_create_secret", "read_secret_file", "write_secret_file"]


class KeyFileError(NodeError):
    """A key file is unreadable, has the wrong size, or is readable by group/others."""


def _check_mode(path: Path) -> None:
    st = path.stat()
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{path}: key file is accessible by group/others (mode {stat.S_IMODE(st.st_mode):04o});"
            f" run 'chmod 600 {path}'"
        )


def read_secret_file(path: Path) -> bytes:
    """Read a key file after checking that only its owner can access it."""
    _check_mode(path)
    return path.read_bytes()


def write_secret_file(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 holding ``data``; fails if it already exists."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # atomic, and fails if another process won the race
    finally:
        tmp.unlink()
    fsync_dir(path.parent)


def load_or_create_secret(path: Path, nbytes: int = 32) -> bytes:
    """Return the random secret in ``path``, creating it (0600) on first use."""
    if not path.exists():
        try:
            write_secret_file(path, secrets.token_bytes(nbytes))
        except FileExistsError:
            pass
    data = read_secret_file(path)
    if len(data) != nbytes:
        raise KeyFileError(f"{path}: expected {nbytes} bytes, found {len(data)}; file is damaged")
    return data
