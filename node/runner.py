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

One retry layer: the runner is the only layer that retries a PACS (:class:`scp.StorageSender`
makes one attempt per job attempt) and, by default, a vendor (``vendors.<name>.max_attempts``
defaults to 1: one try of each request per job attempt). The schedule is
:class:`scp.SenderSettings`' (``sender.*``: persistent, jittered, doubling), so a destination
or a vendor may be down for ``SenderSettings.budget()`` (default 6.2-12.5 min, see ``blindread
config check``) before a job is quarantined, with ``sender.max_attempts`` tries in all (before,
the vendor client's 5 tries ran inside each job attempt: 5 x 5 tries and ~15 s of sleeping per
attempt). A job a paused destination or vendor holds back (:class:`node.pauses.Pauses`) is put
back in the queue without counting an attempt.

Workers: ``workers`` threads take due jobs (the store hands each job to one of them, see
:meth:`JobStore.next_due`), so one slow job (a vendor taking minutes) does not hold up the
others; per-vendor concurrency is bounded where the vendor is used (:mod:`node.vendors`).
Housekeeping and claim recovery run in worker 0 only.
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
from node.latency import observe_finished
from node.metrics import NodeMetrics
from node.pauses import JobDeferredError
from scp import SenderSettings

__all__ = ["JobAction", "JobRunner", "RunningJob"]

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


@dataclass(frozen=True)
class RunningJob:
    """A job a worker is running now, and since when (monotonic and wall clock)."""

    job: Job
    worker: int
    started: float
    started_at: float

    def seconds(self) -> float:
        return time.monotonic() - self.started


class JobRunner:
    """``workers`` threads taking due jobs from the store."""

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
        workers: int = 1,
        metrics: NodeMetrics | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.workers = workers
        self.metrics = metrics
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
        self._unrecorded: dict[int, _Unrecorded] = {}  # by worker
        self._running: dict[int, RunningJob] = {}  # by worker
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []

    def wake(self) -> None:
        """A job was queued: look now instead of at the next poll."""
        self._wake.set()

    def unrecorded(self) -> int:
        """Jobs finished whose new state the store could not record yet (at most one per
        worker)."""
        with self._lock:
            return len(self._unrecorded)

    def running(self) -> list[RunningJob]:
        """The jobs being run now, oldest first (``/healthz``'s stuck-runner check)."""
        with self._lock:
            return sorted(self._running.values(), key=lambda r: r.started)

    def alive(self) -> bool:
        """Every worker thread is running (false before :meth:`start` and after a crash)."""
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def run_once(self, worker: int = 0) -> Job | None:
        """Run the next due job, if any, as ``worker``; returns its new state (``None`` also
        while an earlier job's outcome is still being recorded, see the module docstring)."""
        pending = self._unrecorded.get(worker)
        if pending is not None:
            if time.monotonic() < pending.next_try:
                return None
            return self._record(pending, worker)
        job = self.store.next_due()
        if job is None:
            return None
        with self._lock:
            self._running[worker] = RunningJob(job, worker, time.monotonic(), time.time())
        try:
            self.action(job)
        except JobDeferredError as exc:
            held = exc  # ``exc`` is unbound after the except clause; the lambda runs later
            return self._record(
                _Unrecorded(job, "deferred", lambda: self._deferred(job, held)), worker
            )
        except Exception as exc:
            err = describe_error(exc)
            return self._record(
                _Unrecorded(job, "attempt failed", lambda: self._failed(job, err)), worker
            )
        finally:
            with self._lock:
                self._running.pop(worker, None)
        return self._record(_Unrecorded(job, "done", lambda: self._done(job)), worker)

    def _record(self, pending: _Unrecorded, worker: int = 0) -> Job | None:
        """Record ``pending``'s transition, or keep it for a retry with backoff."""
        try:
            new = pending.record()
        except sqlite3.Error as exc:
            first, cap = self.record_retry
            pending.tries += 1
            pending.backoff = min(cap, pending.backoff * 2 or first)
            pending.next_try = time.monotonic() + pending.backoff
            with self._lock:
                self._unrecorded[worker] = pending
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
        with self._lock:
            self._unrecorded.pop(worker, None)
        return new

    def _done(self, job: Job) -> Job:
        recorded = self.store.mark_done(job.id)
        new = self.store.get(job.id)
        assert new is not None
        if recorded and self.metrics is not None:
            observe_finished(self.metrics, new)
        log.info("job %d (study %s) done", job.id, job.study)
        return new

    def _deferred(self, job: Job, exc: JobDeferredError) -> Job:
        new = self.store.defer(job.id, str(exc), exc.retry_seconds)
        log.info("job %d (study %s) held back: %s; looked at again in %.0f s",
                 job.id, job.study, exc, exc.retry_seconds)  # fmt: skip
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
        self._threads = [
            threading.Thread(target=self._run, args=(n,), name=f"job-runner-{n}", daemon=True)
            for n in range(self.workers)
        ]
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the workers to stop after their current job; wait up to ``timeout`` s."""
        self._stop.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

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

    def _run(self, worker: int) -> None:
        while not self._stop.is_set():
            if worker == 0:
                self._housekeep()
                self._recover_claims()
            try:
                job = self.run_once(worker)
            except Exception:
                log.exception("job runner error")
                job = None
            if job is None:
                self._wake.wait(self.poll_seconds)
                self._wake.clear()
