"""Runs queued jobs through a pluggable action with persistent exponential backoff.

The action is any ``Callable[[Job], None]``: today a result object sent to a destination, later
the real pipeline (rules -> de-identification -> inference -> SR). It must be idempotent: after
a crash a ``running`` job is run again. Raising means "try again later"; after
``max_attempts`` the job is ``failed`` and its files are quarantined.

Between jobs the runner also retries claims a failure left ``claiming``
(:meth:`node.intake.Intake.recover_claims`): every ``claim_retry[0]`` seconds while none is
stuck, and with a backoff doubling up to ``claim_retry[1]`` seconds while some are (a full disk
is not fixed in a second; the log gets one line per attempt, not one per poll).

Recording a job's outcome (``mark_done`` / ``mark_attempt_failed``) can itself fail: the
state directory's disk full (``sqlite3.OperationalError: database or disk is full``), the
database locked. The runner then keeps the outcome in memory and retries only the state
transition, with a backoff doubling from ``record_retry[0]`` to ``record_retry[1]`` seconds,
taking no other job meanwhile (the store cannot record theirs either); one log line per attempt,
``/healthz`` says ``job_states_recorded: false`` (:meth:`JobRunner.unrecorded`). We chose to
retry the transition rather than re-run the job because the job's work (SR sent, results in the
step store) is already done and durable; re-running it would also be safe (every step is
idempotent), and that is what happens if the node stops before the transition is recorded:
the job is still ``running`` in the store and start-up requeues it (:meth:`JobStore.reset_running`).

Retry layers (they multiply, so here is the total): the runner is the only layer that retries
a PACS (:class:`scp.StorageSender` makes one attempt per job attempt), so a destination may be
down for ``SenderSettings.budget()`` (default 6.2-12.5 min, see ``blindread config check``)
before a job is quarantined. The vendor client retries inside each job attempt
(``vendors.<name>.max_attempts``, 1 s doubling to 60 s: ~15 s by default), so a vendor outage
is ridden out for up to ``sender.max_attempts`` x that (and the waits between job attempts).
"""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from node.intake import Intake
from node.jobs import Job, JobStore, describe_error
from scp import SenderSettings

__all__ = ["JobAction", "JobRunner"]

log = logging.getLogger(__name__)

JobAction = Callable[[Job], None]


@dataclass
class _Unrecorded:
    """A job whose outcome is known but not yet recorded in the store."""

    job: Job
    outcome: str  # "done" or "attempt failed"
    record: Callable[[], Job]  # the state transition (idempotent: guarded by state='running')
    tries: int = 0
    backoff: float = 0.0
    next_try: float = 0.0


class JobRunner:
    """One worker thread taking due jobs from the store."""

    def __init__(
        self,
        store: JobStore,
        intake: Intake,
        action: JobAction,
        retry: SenderSettings,
        poll_seconds: float = 0.2,
        housekeeping: Callable[[], object] | None = None,
        housekeeping_seconds: float = 3600.0,
        claim_retry: tuple[float, float] = (1.0, 60.0),
        record_retry: tuple[float, float] = (1.0, 60.0),
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.intake = intake
        self.action = action
        self.retry = retry
        self.rng = rng  # jitter of the backoff; None = scp's module-wide RNG
        self.poll_seconds = poll_seconds
        self.housekeeping = housekeeping
        self.housekeeping_seconds = housekeeping_seconds
        self._next_housekeeping = 0.0
        self.claim_retry = claim_retry
        self._next_claim_check = 0.0
        self._claim_backoff = 0.0
        self.record_retry = record_retry
        self._unrecorded: _Unrecorded | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        """A job was queued: look now instead of at the next poll."""
        self._wake.set()

    def unrecorded(self) -> int:
        """Jobs finished whose new state the store could not record yet (0 or 1)."""
        return 0 if self._unrecorded is None else 1

    def run_once(self) -> Job | None:
        """Run the next due job, if any; returns its new state (``None`` also while an
        earlier job's outcome is still being recorded, see the module docstring)."""
        if self._unrecorded is not None:
            if time.monotonic() < self._unrecorded.next_try:
                return None
            return self._record(self._unrecorded)
        job = self.store.next_due()
        if job is None:
            return None
        try:
            self.action(job)
        except Exception as exc:
            err = describe_error(exc)
            return self._record(_Unrecorded(job, "attempt failed", lambda: self._failed(job, err)))
        return self._record(_Unrecorded(job, "done", lambda: self._done(job)))

    def _record(self, pending: _Unrecorded) -> Job | None:
        """Record ``pending``'s transition, or keep it for a retry with backoff."""
        try:
            new = pending.record()
        except sqlite3.Error as exc:
            first, cap = self.record_retry
            pending.tries += 1
            pending.backoff = min(cap, pending.backoff * 2 or first)
            pending.next_try = time.monotonic() + pending.backoff
            self._unrecorded = pending
            log.warning(
                "job %d (study %s) %s but its state could not be recorded (%s: %s, try %d);"
                " retry in %.1f s",
                pending.job.id,
                pending.job.study,
                pending.outcome,
                type(exc).__name__,
                exc,
                pending.tries,
                pending.backoff,
            )
            return None
        if pending.tries:
            log.info(
                "job %d (study %s) state recorded after %d failed try(s)",
                pending.job.id,
                pending.job.study,
                pending.tries,
            )
        self._unrecorded = None
        return new

    def _done(self, job: Job) -> Job:
        self.store.mark_done(job.id)
        new = self.store.get(job.id)
        assert new is not None
        log.info("job %d (study %s) done", job.id, job.study)
        return new

    def _failed(self, job: Job, err: str) -> Job:
        new = self.store.mark_attempt_failed(
            job.id,
            err,
            self.retry.max_attempts,
            lambda n: self.retry.jittered_backoff(n, self.rng),
            self.intake.quarantine_dir / job.token,
        )
        if new.state == "failed":
            self.intake.quarantine(new)
            log.error(
                "job %d (study %s) failed after %d attempt(s): %s; files quarantined",
                job.id,
                job.study,
                new.attempts,
                err,
            )
        else:
            log.warning(
                "job %d (study %s) attempt %d failed: %s; retry in %.1f s",
                job.id,
                job.study,
                new.attempts,
                err,
                new.next_attempt_at - new.updated_at,
            )
        return new

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="job-runner", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the worker to stop after its current job; wait up to ``timeout`` s."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _housekeep(self) -> None:
        """Periodic chores between jobs (retention), never in the middle of one."""
        if self.housekeeping is None or time.monotonic() < self._next_housekeeping:
            return
        self._next_housekeeping = time.monotonic() + self.housekeeping_seconds
        try:
            self.housekeeping()
        except Exception as exc:
            log.warning("housekeeping failed: %s", type(exc).__name__)

    def _recover_claims(self) -> None:
        """Retry claims left ``claiming`` (see the module docstring for the schedule)."""
        now = time.monotonic()
        if now < self._next_claim_check:
            return
        try:
            stuck = self.intake.recover_claims()
        except Exception as exc:  # the job store itself unreadable: try again later
            log.warning("claim recovery failed: %s", type(exc).__name__)
            stuck = 1
        first, cap = self.claim_retry
        if stuck:
            self._claim_backoff = min(cap, self._claim_backoff * 2 or first)
            self._next_claim_check = now + self._claim_backoff
        else:
            self._claim_backoff = 0.0
            self._next_claim_check = now + first

    def _run(self) -> None:
        while not self._stop.is_set():
            self._housekeep()
            self._recover_claims()
            try:
                job = self.run_once()
            except Exception:
                log.exception("job runner error")
                job = None
            if job is None:
                self._wake.wait(self.poll_seconds)
                self._wake.clear()
