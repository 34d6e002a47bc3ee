"""Turning complete spool batches into jobs, exactly once, across crashes.

A claim is: insert a ``claiming`` row (durable) -> rename the spool batch directory to
``<jobs_dir>/<token>`` (durable) -> mark the row ``queued`` with its file list. A crash between
any two steps is finished (or undone) by :meth:`Intake.recover` at start-up, before the SCP
accepts anything, so every acknowledged instance ends up in exactly one job.
Files of a job move between ``jobs_dir`` and ``quarantine_dir`` the same way: the row's ``dir``
is updated first, then the directory is renamed; recovery completes half-done moves.

A claim that fails half-way while the node runs (the rename succeeded, then the job store's
update hit "database or disk is full") is left in ``claiming`` and finished by
:meth:`Intake.recover_claims`, which the job runner calls periodically with backoff (see
:class:`node.runner.JobRunner`); :meth:`Intake.stuck_claims` counts such claims for
``/healthz``. Recovery never raises for one claim it cannot finish yet: it logs, counts it as
stuck and tries again later, so a start-up is never blocked by it.

The spool and ``jobs_dir`` must be on one file system (``blindread config check`` and the node's
start-up refuse anything else, see :meth:`node.config.NodeConfig.filesystem_problems`). Should a
rename still fail with ``EXDEV`` (a mount added under a running node, a node started before the
check existed), the batch is moved by copy instead: each file copied and fsynced into a staging
directory beside the destination, the staging directory renamed into place (same file system)
and fsynced, then the originals unlinked. A crash after the copy and before the unlink leaves
identical originals in the spool; recovery of the claim deletes them (a same-named file with
other bytes is a re-sent instance and stays for the next job).
"""

from __future__ import annotations

import errno
import filecmp
import logging
import os
import shutil
import sqlite3
import threading
import uuid
from pathlib import Path

from durable_io import fsync_dir
from node.jobs import Job, JobStore
from scp import Spool

__all__ = ["Intake"]

log = logging.getLogger(__name__)


class Intake:
    """Moves batches from the spool into the job store and files into/out of quarantine."""

    def __init__(self, spool: Spool, store: JobStore, jobs_dir: Path, quarantine_dir: Path):
        self.spool = spool
        self.store = store
        self.jobs_dir = jobs_dir
        self.quarantine_dir = quarantine_dir
        self._lock = threading.Lock()
        self._claiming: set[str] = set()  # tokens of claims being made by this process
        for d in (jobs_dir, quarantine_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)

    def claim(self, study_key: str) -> Job | None:
        """Make the spool batch of ``study_key`` a queued job; ``None`` if there is none.

        If a step fails after the claim row was written, the row stays ``claiming`` (undone
        here when the batch has not moved yet) and :meth:`recover_claims` finishes it later.
        """
        with self.spool.locked(study_key):
            if not self.spool.study_dir(study_key).is_dir():
                return None
            token = uuid.uuid4().hex
            dest = self.jobs_dir / token
            with self._lock:
                self._claiming.add(token)
            try:
                job_id = self.store.begin_claim(study_key, token, dest)
                try:
                    files = self._take(study_key, dest)
                except BaseException:
                    if not dest.exists():  # nothing moved: undo the row if the store lets us
                        try:
                            self.store.drop_claim(job_id)
                        except sqlite3.Error:
                            pass  # recover_claims() drops it later
                    raise
                if not files:
                    self.store.drop_claim(job_id)
                    return None
                job = self.store.finish_claim(job_id, files)
            finally:
                with self._lock:
                    self._claiming.discard(token)
        log.info("study %s complete: job %d with %d instance(s)", study_key, job.id, len(files))
        return job

    def recover(self) -> None:
        """Finish every half-done claim and directory move (call before serving).

        A claim that cannot be finished yet (disk still full, ...) does not stop the start:
        it is logged, left ``claiming`` and retried by :meth:`recover_claims` from the runner.
        """
        self.spool.clean_partial()
        self.recover_claims()
        for job in self.store.list():
            if job.state in ("queued", "running", "failed") and not job.dir.is_dir():
                for other in (self.jobs_dir / job.token, self.quarantine_dir / job.token):
                    if other != job.dir and other.is_dir():
                        self._move(other, job.dir)
        n = self.store.reset_running()
        if n:
            log.info("%d interrupted job(s) requeued", n)

    def recover_claims(self) -> int:
        """Finish (or undo) every claim left ``claiming`` that no thread is working on.

        Safe while the node serves: each claim is re-read under its study's spool lock.
        Returns how many claims are still stuck (they are logged and tried again next call).
        """
        stuck = 0
        for job in self.store.list("claiming"):
            if self._in_progress(job.token):
                continue
            try:
                self._recover_claim(job)
            except (OSError, sqlite3.Error) as exc:
                stuck += 1
                log.warning(
                    "claim of study %s (job %d) not finished yet, will retry: %s",
                    job.study,
                    job.id,
                    _describe(exc),
                )
        return stuck

    def stuck_claims(self) -> int:
        """Claims left ``claiming`` by a failure (not the ones being made right now)."""
        return sum(1 for job in self.store.list("claiming") if not self._in_progress(job.token))

    def _in_progress(self, token: str) -> bool:
        with self._lock:
            return token in self._claiming

    def _recover_claim(self, job: Job) -> None:
        with self.spool.locked(job.study):
            current = self.store.get(job.id)
            if current is None or current.state != "claiming":
                return  # finished or undone meanwhile
            dest = job.dir
            if not dest.is_dir():
                self._take(job.study, dest)
            if dest.is_dir():
                self._drop_copies(job.study, dest)
                files = sorted(p.name for p in dest.iterdir() if p.name.endswith(".dcm"))
                if files:
                    self.store.finish_claim(job.id, files)
                    log.info("recovered claim of study %s as job %d", job.study, job.id)
                    return
            self.store.drop_claim(job.id)

    def _take(self, study_key: str, dest: Path) -> list[str] | None:
        """The spool's rename of a batch to ``dest``, by copy when it crosses file systems
        (call with the study's spool lock held)."""
        try:
            return self.spool.take_study(study_key, dest)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
        log.warning(
            "spool and %s are on different file systems (EXDEV): copying study %s instead of "
            "renaming it; put scp.spool_dir on the file system of node.state_dir",
            self.jobs_dir,
            study_key,
        )
        src = self.spool.study_dir(study_key)
        _copy_tree(src, dest, suffix=".dcm")  # the spool's files only, not a partial write
        self._drop_copies(study_key, dest)
        return sorted(p.name for p in dest.iterdir() if p.name.endswith(".dcm"))

    def _drop_copies(self, study_key: str, dest: Path) -> None:
        """Delete spool files that are byte-identical copies of files in ``dest`` (left by a
        cross-device move interrupted after its copy); the spool's study directory goes too
        once empty. Call with the study's spool lock held."""
        src = self.spool.study_dir(study_key)
        if not src.is_dir():
            return
        dropped = False
        for p in src.iterdir():
            q = dest / p.name
            if p.name.endswith(".dcm") and q.is_file() and filecmp.cmp(p, q, shallow=False):
                p.unlink()
                dropped = True
        filecmp.clear_cache()  # its module-wide cache would keep every job's paths forever
        if dropped:
            fsync_dir(src)
            try:
                src.rmdir()
            except OSError:
                pass  # newer instances remain: the next job takes them
            fsync_dir(src.parent)

    def quarantine(self, job: Job) -> None:
        """Move a failed job's files to its (already recorded) quarantine directory."""
        src = self.jobs_dir / job.token
        if src.is_dir() and src != job.dir:
            self._move(src, job.dir)

    def cancel(self, job_id: int, reason: str) -> Job | None:
        """Cancel a queued job (an operator's action): it becomes ``failed`` with ``reason``
        and its files go to quarantine, from where :meth:`retry` can bring it back. ``None``
        if the job is not queued."""
        job = self.store.get(job_id)
        if job is None:
            return None
        new = self.store.cancel(job_id, reason, self.quarantine_dir / job.token)
        if new is not None:
            self.quarantine(new)
        return new

    def retry(self, job_id: int) -> Job | None:
        """Requeue a failed job, moving its files back out of quarantine.

        Files move first, then the row: a running node's runner can only see the job queued
        once its files are in place. A crash in between is undone by :meth:`recover` (the
        failed row's directory is found in ``jobs_dir`` and moved back to quarantine).
        """
        job = self.store.get(job_id)
        if job is None or job.state != "failed":
            return None
        work = self.jobs_dir / job.token
        if job.dir.is_dir() and job.dir != work:
            self._move(job.dir, work)
        new = self.store.retry(job_id, work)
        if new is None and work.is_dir() and job.dir != work:
            self._move(work, job.dir)  # someone else changed the job meanwhile
        return new

    def purge_done(self, older_than_seconds: float) -> int:
        """Delete the files of jobs finished more than ``older_than_seconds`` ago.

        Only ``done`` jobs: failed ones stay in quarantine until an admin retries them. The job
        row stays (history, pseudonym, state); its file list is emptied first, so a crash
        between the two steps leaves an orphan folder, never a row pointing at missing files.
        Returns how many jobs were purged.
        """
        n = 0
        for job in self.store.done_before(self.store.clock() - older_than_seconds):
            self.store.forget_files(job.id)
            if job.dir.is_dir() and job.dir.parent == self.jobs_dir:
                shutil.rmtree(job.dir)
                fsync_dir(self.jobs_dir)
            n += 1
        if n:
            log.info("retention: deleted the files of %d finished job(s)", n)
        return n

    @staticmethod
    def _move(src: Path, dest: Path) -> None:
        """Rename ``src`` to ``dest`` durably; across file systems copy, then delete ``src``."""
        dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            os.rename(src, dest)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            _copy_tree(src, dest)  # a job's folder holds steps/ and work/ too
            shutil.rmtree(src)
        fsync_dir(src.parent)
        fsync_dir(dest.parent)


def _copy_synced(src: str, dst: str) -> None:
    shutil.copy2(src, dst)
    fd = os.open(dst, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_tree(src: Path, dest: Path, suffix: str = "") -> None:
    """Copy the folder ``src`` (subfolders included; with ``suffix``, only its files whose names
    end so) into a new ``dest`` durably: every file and folder fsynced in a staging folder
    beside ``dest``, then renamed to ``dest``. Modes are kept (spool and job files are 0600)."""
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    staging = dest.with_name(f".{dest.name}.copying")
    shutil.rmtree(staging, ignore_errors=True)  # left by a crash during an earlier copy
    try:
        def skipped(folder: str, names: list[str]) -> list[str]:
            return [n for n in names if suffix and not n.endswith(suffix)]

        shutil.copytree(src, staging, ignore=skipped, copy_function=_copy_synced)
        for folder, _, _ in os.walk(staging, topdown=False):
            fsync_dir(Path(folder))
        os.rename(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_dir(dest.parent)


def _describe(exc: BaseException) -> str:
    """PHI-free text of a recovery error: the errno name for OS errors (no file names), the
    SQLite message (fixed texts such as "database or disk is full") for the job store's."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{type(exc).__name__} {errno.errorcode.get(exc.errno, exc.errno)}: " + (
            os.strerror(exc.errno)
        )
    if isinstance(exc, sqlite3.Error):
        return f"{type(exc).__name__}: {exc}"[:200]
    return type(exc).__name__
