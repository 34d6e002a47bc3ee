"""SQLite job store (WAL): one row per completed study batch.

States: ``claiming`` (the batch is being moved out of the spool; finished or undone by
:meth:`node.intake.Intake.recover` after a crash), ``queued``, ``running``, ``done``,
``failed``. Every transition is a conditional ``UPDATE ... WHERE state = ?`` so two runners (or
a runner and ``blindread jobs retry``) can never both move a job, and ``done`` is final: no job
runs twice to completion. ``token`` and ``dir`` are UNIQUE, so the same spool batch can never
become two jobs. ``last_error`` holds PHI-free text only (see :func:`describe_error`).
``synchronous=FULL``: a claim row is durable before its batch directory is renamed.
"""

from __future__ import annotations

import builtins
import errno as errno_module
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from node.errors import NodeError

__all__ = ["STATES", "Job", "JobError", "JobStore", "describe_error"]

STATES = ("claiming", "queued", "running", "done", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study TEXT NOT NULL,
    token TEXT NOT NULL UNIQUE,
    dir TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL CHECK (state IN ('claiming','queued','running','done','failed')),
    files TEXT NOT NULL DEFAULT '[]',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (state, next_attempt_at);
"""


class JobError(NodeError):
    """A job step failed with a message that is safe to store and log (no PHI)."""


def describe_error(exc: BaseException) -> str:
    """PHI-free text for ``last_error``: our own error types carry vetted messages, and so do
    the vendor link's errors (the only secure_infer errors kept: the link carries ciphertexts
    only, and its messages name a route, a reason such as ``ReadTimeout`` and the vendor's error
    code); others only their type name (an arbitrary exception message might quote a dataset,
    a ChainError names a file path)."""
    from scp import ScpError
    from secure_infer import VendorError, VendorUnavailableError

    if isinstance(exc, (JobError, ScpError, VendorError, VendorUnavailableError)):
        return f"{type(exc).__name__}: {exc}"[:500]
    if isinstance(exc, OSError) and exc.errno is not None:
        # errno and the system's text only: ``filename`` (a path with pseudonyms, or worse,
        # a library's) and ``str(exc)`` are left out
        code = errno_module.errorcode.get(exc.errno, str(exc.errno))
        text = os.strerror(exc.errno)
        return f"{type(exc).__name__}: [{code}] {text}"
    return type(exc).__name__


@dataclass(frozen=True)
class Job:
    """A snapshot of one job row."""

    id: int
    study: str
    token: str
    dir: Path
    state: str
    files: tuple[str, ...]
    attempts: int
    next_attempt_at: float
    last_error: str | None
    created_at: float
    updated_at: float

    @property
    def paths(self) -> list[Path]:
        """The job's instance files (in its current directory)."""
        return [self.dir / f for f in self.files]


def _job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        study=row["study"],
        token=row["token"],
        dir=Path(row["dir"]),
        state=row["state"],
        files=tuple(json.loads(row["files"])),
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        last_error=row["last_error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


class JobStore:
    """Thread-safe access to the jobs database; several processes may open it (WAL)."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # SQLite creates the file (and its -wal/-shm, which copy its mode) under the umask:
        # 0644 for a file that holds study pseudonyms and job errors. Made 0600 first.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        self.path = path
        self.clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- reading ---------------------------------------------------------------------
    def get(self, job_id: int) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def list(self, state: str | None = None) -> builtins.list[Job]:
        with self._lock:
            if state is None:
                rows = self._db.execute("SELECT * FROM jobs ORDER BY id").fetchall()
            else:
                rows = self._db.execute(
                    "SELECT * FROM jobs WHERE state = ? ORDER BY id", (state,)
                ).fetchall()
        return [_job(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """How many jobs are in each state (every state of :data:`STATES`, zeros included)."""
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
            found = {str(r["state"]): int(r["n"]) for r in rows.fetchall()}
        return {state: found.get(state, 0) for state in STATES}

    def done_before(self, cutoff: float) -> builtins.list[Job]:
        """Finished jobs last updated before ``cutoff`` (epoch seconds) that still list files."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE state = 'done' AND updated_at < ? AND files != '[]'"
                " ORDER BY id",
                (cutoff,),
            ).fetchall()
        return [_job(r) for r in rows]

    def forget_files(self, job_id: int) -> None:
        """Record that a finished job's files were deleted (retention)."""
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET files = '[]' WHERE id = ? AND state = 'done'", (job_id,)
            )

    def earlier_done(self, job: Job) -> builtins.list[Job]:
        """Finished jobs of the same study created before ``job`` (instances that arrived
        before its completion timer last fired), oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE study = ? AND id < ? AND state = 'done' ORDER BY id",
                (job.study, job.id),
            ).fetchall()
        return [_job(r) for r in rows]

    # -- claiming a spool batch ------------------------------------------------------
    def begin_claim(self, study: str, token: str, dest: Path) -> int:
        now = self.clock()
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO jobs (study, token, dir, state, created_at, updated_at)"
                " VALUES (?, ?, ?, 'claiming', ?, ?)",
                (study, token, str(dest), now, now),
            )
            return int(cur.lastrowid or 0)

    def finish_claim(self, job_id: int, files: builtins.list[str]) -> Job:
        now = self.clock()
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET state = 'queued', files = ?, next_attempt_at = ?, updated_at = ?"
                " WHERE id = ? AND state = 'claiming'",
                (json.dumps(sorted(files)), now, now, job_id),
            )
        job = self.get(job_id)
        assert job is not None
        return job

    def drop_claim(self, job_id: int) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM jobs WHERE id = ? AND state = 'claiming'", (job_id,))

    # -- running ---------------------------------------------------------------------
    def reset_running(self) -> int:
        """After a crash: jobs that were running go back to the queue (steps are idempotent)."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE jobs SET state = 'queued', updated_at = ? WHERE state = 'running'",
                (self.clock(),),
            )
            return cur.rowcount

    def next_due(self) -> Job | None:
        """Atomically take the oldest due queued job and mark it running."""
        now = self.clock()
        with self._tx() as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE state = 'queued' AND next_attempt_at <= ?"
                " ORDER BY next_attempt_at, id LIMIT 1",
                (now,),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state = 'running', updated_at = ?"
                " WHERE id = ? AND state = 'queued'",
                (now, row["id"]),
            )
        return self.get(int(row["id"]))

    def mark_done(self, job_id: int) -> bool:
        with self._tx() as db:
            cur = db.execute(
                "UPDATE jobs SET state = 'done', attempts = attempts + 1, last_error = NULL,"
                " updated_at = ? WHERE id = ? AND state = 'running'",
                (self.clock(), job_id),
            )
            return cur.rowcount == 1

    def mark_attempt_failed(
        self,
        job_id: int,
        error: str,
        max_attempts: int,
        backoff: Callable[[int], float],
        quarantine_dir: Path,
    ) -> Job:
        """Count a failed attempt: requeue with backoff, or ``failed`` with the files' new
        home ``quarantine_dir`` (the caller moves them there after this commit)."""
        now = self.clock()
        with self._tx() as db:
            row = db.execute("SELECT attempts FROM jobs WHERE id = ?", (job_id,)).fetchone()
            attempts = int(row["attempts"]) + 1
            if attempts >= max_attempts:
                db.execute(
                    "UPDATE jobs SET state = 'failed', attempts = ?, last_error = ?, dir = ?,"
                    " updated_at = ? WHERE id = ? AND state = 'running'",
                    (attempts, error, str(quarantine_dir), now, job_id),
                )
            else:
                db.execute(
                    "UPDATE jobs SET state = 'queued', attempts = ?, last_error = ?,"
                    " next_attempt_at = ?, updated_at = ? WHERE id = ? AND state = 'running'",
                    (attempts, error, now + backoff(attempts), now, job_id),
                )
        job = self.get(job_id)
        assert job is not None
        return job

    def defer(self, job_id: int, reason: str, seconds: float) -> Job:
        """``running`` -> ``queued`` in ``seconds``, no attempt counted (a paused destination
        or vendor holds the job back; ``reason`` is shown as its last error)."""
        now = self.clock()
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET state = 'queued', last_error = ?, next_attempt_at = ?,"
                " updated_at = ? WHERE id = ? AND state = 'running'",
                (reason[:500], now + seconds, now, job_id),
            )
        job = self.get(job_id)
        assert job is not None
        return job

    def cancel(self, job_id: int, reason: str, quarantine_dir: Path) -> Job | None:
        """``queued`` -> ``failed`` now (an operator's cancel), files to ``quarantine_dir``
        (the caller moves them); ``None`` unless the job was queued. A running job cannot be
        cancelled half-way: its steps are idempotent, cancel it once its attempt ends."""
        now = self.clock()
        with self._tx() as db:
            cur = db.execute(
                "UPDATE jobs SET state = 'failed', last_error = ?, dir = ?, updated_at = ?"
                " WHERE id = ? AND state = 'queued'",
                (reason[:500], str(quarantine_dir), now, job_id),
            )
            if cur.rowcount != 1:
                return None
        return self.get(job_id)

    def retry(self, job_id: int, work_dir: Path) -> Job | None:
        """``failed`` -> ``queued`` now, attempts reset; files move back to ``work_dir``.
        ``None`` if the job is not failed."""
        now = self.clock()
        with self._tx() as db:
            cur = db.execute(
                "UPDATE jobs SET state = 'queued', attempts = 0, next_attempt_at = ?, dir = ?,"
                " updated_at = ? WHERE id = ? AND state = 'failed'",
                (now, str(work_dir), now, job_id),
            )
            if cur.rowcount != 1:
                return None
        return self.get(job_id)
