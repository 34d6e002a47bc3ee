"""Study completion: a study batch is complete after a quiet period or a maximum age.

The same stable-age rule as Orthanc (``StableAge``) and mercure. Arrival times live in memory
(fed by the SCP after each durable store) and are re-seeded from spool file times at start-up,
so a restart only delays completion, it never forgets a study.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from scp._settings import CompletionSettings
from scp._spool import SpooledStudy

__all__ = ["CompletionMonitor"]

log = logging.getLogger(__name__)


class CompletionMonitor:
    """Calls ``on_complete(study_key)`` from its own thread once a study batch is stable.

    ``on_complete`` must be idempotent and cope with a study directory that is already gone.
    If it raises, the study is tried again on the next tick.
    """

    def __init__(
        self,
        settings: CompletionSettings,
        on_complete: Callable[[str], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.on_complete = on_complete
        self.clock = clock
        self._seen: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def seed(self, studies: Iterable[SpooledStudy]) -> None:
        """Resume timers for batches found in the spool at start-up.

        The quiet period restarts now: while we were down, senders could not deliver the rest
        of a study, so "no news since the last file" says nothing about completeness.
        """
        now = self.clock()
        with self._lock:
            for s in studies:
                self._seen[s.key] = (s.first, max(s.last, now))

    def touch(self, key: str) -> None:
        """An instance of ``key`` was just stored (cheap; called from the C-STORE handler)."""
        now = self.clock()
        with self._lock:
            first, _ = self._seen.get(key, (now, now))
            self._seen[key] = (first, now)

    def pending(self) -> list[str]:
        with self._lock:
            return list(self._seen)

    def timers(self) -> list[tuple[str, float, float, float]]:
        """``(key, first, last, due_at)`` of every batch in progress (epoch seconds; due at
        the end of its quiet period or max age, whichever is sooner), soonest first."""
        q, m = self.settings.quiet_seconds, self.settings.max_age_seconds
        with self._lock:
            rows = [(k, f, last, min(last + q, f + m)) for k, (f, last) in self._seen.items()]
        return sorted(rows, key=lambda r: r[3])

    def complete_now(self, key: str) -> bool:
        """Hand ``key``'s batch over now (an operator's force-complete), without waiting for
        its timer; ``False`` if no batch of ``key`` is in progress."""
        with self._lock:
            last = self._seen.get(key, (0.0, 0.0))[1] if key in self._seen else None
        if last is None:
            return False
        self.on_complete(key)
        with self._lock:
            if key in self._seen and self._seen[key][1] == last:
                del self._seen[key]
        return True

    def due(self) -> list[tuple[str, float]]:
        """Batches whose quiet period or max age has passed, with the ``last`` seen."""
        now = self.clock()
        q, m = self.settings.quiet_seconds, self.settings.max_age_seconds
        with self._lock:
            return [
                (k, last)
                for k, (first, last) in self._seen.items()
                if now - last >= q or now - first >= m
            ]

    def tick(self) -> int:
        """Complete every due batch once; returns how many were handed over."""
        done = 0
        for key, last in self.due():
            try:
                self.on_complete(key)
            except Exception:
                log.exception("completing study %s failed; will retry", key)
                continue
            done += 1
            with self._lock:
                # An instance stored meanwhile went into a fresh batch: keep its timer.
                if key in self._seen and self._seen[key][1] == last:
                    del self._seen[key]
        return done

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="completion", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.settings.poll_seconds):
            self.tick()
