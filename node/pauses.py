"""Destinations and vendors an operator paused (console / REST API), kept across restarts.

A paused destination or vendor is not contacted: a job that needs it is put back in the queue
without counting an attempt (:class:`JobDeferredError`, caught by :mod:`node.runner`) and runs
once it is resumed. The set lives in ``<state_dir>/paused.json`` (written with
:func:`durable_io.atomic_write`), so a restart does not silently resume a PACS under maintenance.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from durable_io import atomic_write
from node.jobs import JobError

__all__ = ["KINDS", "JobDeferredError", "Pauses"]

KINDS = ("destination", "vendor")


class JobDeferredError(JobError):
    """The job needs a paused destination or vendor: requeued, no attempt counted."""

    def __init__(self, message: str, retry_seconds: float = 30.0) -> None:
        super().__init__(message)
        self.retry_seconds = retry_seconds


class Pauses:
    """Thread-safe set of paused ``(kind, name)`` pairs, persisted in ``path``."""

    def __init__(self, path: Path, recheck_seconds: float = 30.0) -> None:
        self.path = path
        self.recheck_seconds = recheck_seconds
        self._lock = threading.Lock()
        self._paused: set[tuple[str, str]] = set()
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            self._paused = {(str(k), str(n)) for k, n in data.get("paused", [])}

    def _save(self) -> None:
        body = json.dumps({"paused": sorted(self._paused)}, indent=1).encode()
        atomic_write(self.path, body)

    def set(self, kind: str, name: str, paused: bool) -> bool:
        """Pause or resume; returns whether anything changed."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}")
        with self._lock:
            before = (kind, name) in self._paused
            if before == paused:
                return False
            (self._paused.add if paused else self._paused.discard)((kind, name))
            self._save()
            return True

    def is_paused(self, kind: str, name: str) -> bool:
        with self._lock:
            return (kind, name) in self._paused

    def check(self, kind: str, name: str) -> None:
        """Raise :class:`JobDeferredError` if ``kind`` ``name`` is paused."""
        if self.is_paused(kind, name):
            raise JobDeferredError(
                f"{kind} {name} is paused by an operator; the job waits (resume it in the"
                " console or with POST /api/v1/" + kind + "s/" + name + "/resume)",
                self.recheck_seconds,
            )
