"""Turning complete spool batches into jobs, exactly once, across crashes.

A claim is: insert a ``claiming`` row (durable) -> rename the spool batch directory to
``<jobs_dir>/<token>`` (durable) -> mark the row ``queued`` with its file list. A crash between
any two steps is finished (or undone) by :meth:`Intake.recover` at start-up, before the SCP
accepts anything, so every acknowledged instance ends up in exactly one job.
Files of a job move between ``jobs_dir`` and ``quarantine_dir`` the same way: the row's ``dir``
is updated first, then the directory is renamed; recovery completes half-done moves.
"""

from __future__ import annotations

import logging
import os
import shutil
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
        for d in (jobs_dir, quarantine_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)

    def claim(self, study_key: str) -> Job | None:
        """Make the spool batch of ``study_key`` a queued job; ``None`` if there is none."""
        with self.spool.locked(study_key):
            if not self.spool.study_dir(study_key).is_dir():
                return None
            token = uuid.uuid4().hex
            job_id = self.store.begin_claim(study_key, token, self.jobs_dir / token)
            files = self.spool.take_study(study_key, self.jobs_dir / token)
            if not files:
                self.store.drop_claim(job_id)
                return None
            job = self.store.finish_claim(job_id, files)
        log.info("study %s complete: job %d with %d instance(s)", study_key, job.id, len(files))
        return job

    def recover(self) -> None:
        """Finish every half-done claim and directory move (call before serving)."""
        self.spool.clean_partial()
        for job in self.store.list("claiming"):
            dest = job.dir
            if not dest.is_dir():
                with self.spool.locked(job.study):
                    self.spool.take_study(job.study, dest)
            if dest.is_dir():
                files = sorted(p.name for p in dest.iterdir() if p.name.endswith(".dcm"))
                if files:
                    self.store.finish_claim(job.id, files)
                    log.info("recovered claim of study %s as job %d", job.study, job.id)
                    continue
            self.store.drop_claim(job.id)
        for job in self.store.list():
            if job.state in ("queued", "running", "failed") and not job.dir.is_dir():
                for other in (self.jobs_dir / job.token, self.quarantine_dir / job.token):
                    if other != job.dir and other.is_dir():
                        self._move(other, job.dir)
        n = self.store.reset_running()
        if n:
            log.info("%d interrupted job(s) requeued", n)

    def quarantine(self, job: Job) -> None:
        """Move a failed job's files to its (already recorded) quarantine directory."""
        src = self.jobs_dir / job.token
        if src.is_dir() and src != job.dir:
            self._move(src, job.dir)

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
        dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.rename(src, dest)
        fsync_dir(src.parent)
        fsync_dir(dest.parent)
