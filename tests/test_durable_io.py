"""durable_io: the crash-safe write helper every room shares."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from durable_io import atomic_write, nbytes, write_all


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.bin"
    atomic_write(target, b"old", mode=0o600)
    assert target.read_bytes() == b"old" and (target.stat().st_mode & 0o777) == 0o600
    atomic_write(target, [b"new ", bytearray(b"content")], sync=False)
    assert target.read_bytes() == b"new content"
    with pytest.raises(TypeError):
        atomic_write(target, [b"half", 42])  # type: ignore[list-item]
    assert target.read_bytes() == b"new content"  # untouched
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.bin"]  # no temp left


def test_write_all_writes_every_part_in_order(tmp_path: Path) -> None:
    path = tmp_path / "parts.bin"
    parts = [b"head", memoryview(b"-body-"), bytearray(b"tail"), b""]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        write_all(fd, parts)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"head-body-tail"
    assert nbytes(parts) == 14
