"""What the vendor's admin commands and the running server share on disk, under ``state_dir``.

* ``registry.json`` - the admin overlay on the config's models: manifests ``added``, versions
  ``retired`` (``name@version``) and ``current`` pins, edited by ``vendor models add|retire|
  current`` under an exclusive ``flock`` and written with :func:`durable_io.atomic_write`;
* ``vendor.pid`` - the serving process, to which the commands send ``SIGHUP``;
* ``registry-status.json`` - written by the server after each (re)load: its ``generation``,
  the models live and every refusal with its reason, so a command can wait for the reload it
  asked for and print the outcome.

Why files and a signal rather than an admin HTTP route: the operator is already on the vendor's
machine (the config is a file there), a signal needs no second credential, and the same reload
follows an edit of the config file (``systemctl reload`` sends SIGHUP too).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from durable_io import atomic_write

__all__ = [
    "Overlay",
    "edit_overlay",
    "read_overlay",
    "read_status",
    "signal_reload",
    "wait_for_status",
    "write_pid",
    "write_status",
]


@dataclass
class Overlay:
    """The admin's changes on top of the config (paths absolute)."""

    added: list[str] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)
    current: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(
            {"added": self.added, "retired": self.retired, "current": self.current},
            indent=2, sort_keys=True,
        ).encode() + b"\n"


def _overlay_path(state_dir: Path) -> Path:
    return state_dir / "registry.json"


def read_overlay(state_dir: Path) -> Overlay:
    """The overlay (empty if none); ``ValueError`` if the file is damaged."""
    try:
        obj = json.loads(_overlay_path(state_dir).read_bytes())
    except FileNotFoundError:
        return Overlay()
    if not isinstance(obj, dict):
        raise ValueError(f"{_overlay_path(state_dir)}: not a JSON object")
    return Overlay(
        [str(x) for x in obj.get("added", [])],
        [str(x) for x in obj.get("retired", [])],
        {str(k): str(v) for k, v in dict(obj.get("current", {})).items()},
    )


@contextlib.contextmanager
def edit_overlay(state_dir: Path) -> Iterator[Overlay]:
    """Read, let the caller change, and durably write the overlay, under an exclusive lock."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = os.open(state_dir / ".registry.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        overlay = read_overlay(state_dir)
        yield overlay
        atomic_write(_overlay_path(state_dir), overlay.to_json(), mode=0o640)
    finally:
        os.close(lock)


def write_pid(state_dir: Path) -> None:
    atomic_write(state_dir / "vendor.pid", f"{os.getpid()}\n".encode(), mode=0o644)


def signal_reload(state_dir: Path) -> int:
    """Send SIGHUP to the serving process; returns its pid (``ProcessLookupError`` if none)."""
    try:
        pid = int((state_dir / "vendor.pid").read_text().strip())
    except (FileNotFoundError, ValueError):
        raise ProcessLookupError(f"no running vendor server ({state_dir / 'vendor.pid'})") from None
    os.kill(pid, signal.SIGHUP)
    return pid


def write_status(state_dir: Path, status: dict[str, Any]) -> None:
    atomic_write(state_dir / "registry-status.json",
                 json.dumps(status, indent=2, sort_keys=True).encode() + b"\n", mode=0o644)


def read_status(state_dir: Path) -> dict[str, Any] | None:
    try:
        obj = json.loads((state_dir / "registry-status.json").read_bytes())
    except (FileNotFoundError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def wait_for_status(state_dir: Path, after: int, timeout: float) -> dict[str, Any] | None:
    """The status once its ``reload`` counter is beyond ``after`` (``None`` on timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = read_status(state_dir)
        if st is not None and int(st.get("reload", -1)) > after:
            return st
        time.sleep(0.1)
    return None
