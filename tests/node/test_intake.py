"""Intake faults (issue #16, defects 2 and 4): a claim whose job-store update fails is finished
without a restart; a rename across file systems (EXDEV) neither loses instances nor stops the
start-up."""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from node.intake import Intake
from node.jobs import Job, JobStore
from node.runner import JobRunner
from scp import SenderSettings, Spool

DISK_FULL = "database or disk is full"


def _intake(tmp_path: Path) -> tuple[Spool, JobStore, Intake]:
    spool = Spool(tmp_path / "spool", lambda uid: f"k{abs(hash(uid)) % 10**12}", fsync=False)
    store = JobStore(tmp_path / "jobs.sqlite")
    return spool, store, Intake(spool, store, tmp_path / "jobs", tmp_path / "quarantine")


def _fill(spool: Spool, n: int, study: str = "1.2") -> str:
    for i in range(n):
        spool.store(study, f"{study}.{i}", f"instance {i}".encode())
    return spool.study_key(study)


def _fail_times(real: Callable[..., Any], times: int) -> Callable[..., Any]:
    """``real``, except that its first ``times`` calls raise SQLite's disk-full error."""
    left = [times]

    def call(*args: Any, **kwargs: Any) -> Any:
        if left[0] > 0:
            left[0] -= 1
            raise sqlite3.OperationalError(DISK_FULL)
        return real(*args, **kwargs)

    return call


def _wait(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def test_claim_stuck_by_a_full_disk_is_finished_by_the_runner_without_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool, store, intake = _intake(tmp_path)
    key = _fill(spool, 3)
    monkeypatch.setattr(store, "finish_claim", _fail_times(store.finish_claim, 1))
    with pytest.raises(sqlite3.OperationalError, match=DISK_FULL):
        intake.claim(key)
    # the rename happened, the update did not: the batch is out of the spool, the row claiming
    assert spool.studies() == []
    assert store.counts()["claiming"] == 1 and intake.stuck_claims() == 1

    seen: list[Job] = []
    runner = JobRunner(store, intake, seen.append, SenderSettings(), poll_seconds=0.02,
                       claim_retry=(0.05, 0.2))
    runner.start()
    try:
        assert _wait(lambda: [j.state for j in store.list()] == ["done"])
    finally:
        runner.stop()
    assert len(seen) == 1 and len(seen[0].files) == 3
    assert all(p.read_bytes().startswith(b"instance ") for p in seen[0].paths)
    assert intake.stuck_claims() == 0 and store.counts()["claiming"] == 0


def test_recover_claims_keeps_a_stuck_claim_until_the_store_accepts_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    spool, store, intake = _intake(tmp_path)
    key = _fill(spool, 2)
    monkeypatch.setattr(store, "finish_claim", _fail_times(store.finish_claim, 3))
    with pytest.raises(sqlite3.OperationalError):
        intake.claim(key)
    with caplog.at_level(logging.WARNING, logger="node.intake"):
        assert intake.recover_claims() == 1
        intake.recover()  # a start-up while the disk is still full does not raise either
    assert intake.stuck_claims() == 1
    assert f"claim of study {key}" in caplog.text and DISK_FULL in caplog.text
    assert "1.2" not in caplog.text.replace(key, "")  # no raw UID
    assert intake.recover_claims() == 0
    (job,) = store.list()
    assert job.state == "queued" and len(job.files) == 2 and intake.stuck_claims() == 0


def test_claim_in_progress_is_not_stuck(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A claim being made right now is counted in the metric but not reported stuck, and
    recovery running meanwhile leaves it alone."""
    spool, store, intake = _intake(tmp_path)
    key = _fill(spool, 1)
    inside, release = threading.Event(), threading.Event()
    real = store.finish_claim

    def slow(job_id: int, files: list[str]) -> Job:
        inside.set()
        release.wait(5)
        return real(job_id, files)

    monkeypatch.setattr(store, "finish_claim", slow)
    t = threading.Thread(target=intake.claim, args=(key,))
    t.start()
    try:
        assert inside.wait(5)
        assert store.counts()["claiming"] == 1 and intake.stuck_claims() == 0
        assert intake.recover_claims() == 0
    finally:
        release.set()
        t.join(5)
    assert [j.state for j in store.list()] == ["queued"]


def _exdev_between(spool_root: Path, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Make ``os.rename`` out of ``spool_root`` fail with EXDEV, as if the spool were another
    file system; returns the refused (src, dest) pairs."""
    real = os.rename
    refused: list[tuple[str, str]] = []

    def rename(src: Any, dest: Any, *args: Any, **kwargs: Any) -> None:
        inside = Path(src).absolute().is_relative_to(spool_root.absolute())
        if inside != Path(dest).absolute().is_relative_to(spool_root.absolute()):
            refused.append((str(src), str(dest)))
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(src), None, str(dest))
        real(src, dest, *args, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    return refused


def test_recover_does_not_crash_on_exdev_and_moves_the_batch_by_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool, store, intake = _intake(tmp_path)
    key = _fill(spool, 4)
    before = {p.name: p.read_bytes() for p in spool.study_dir(key).iterdir()}
    dest = tmp_path / "jobs" / "tok"
    job_id = store.begin_claim(key, "tok", dest)  # crash before the rename
    refused = _exdev_between(spool.root, monkeypatch)
    intake.recover()  # raised OSError(EXDEV) before the fix: the node could not start
    assert refused, "the rename was not attempted across 'devices'"
    (job,) = store.list()
    assert (job.id, job.state, len(job.files)) == (job_id, "queued", 4)
    assert {p.name: p.read_bytes() for p in job.paths} == before
    assert spool.studies() == [] and not spool.study_dir(key).exists()
    assert [p.name for p in (tmp_path / "jobs").iterdir()] == ["tok"]  # no staging left


def test_claim_across_devices_by_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool, store, intake = _intake(tmp_path)
    key = _fill(spool, 3)
    _exdev_between(spool.root, monkeypatch)
    job = intake.claim(key)
    assert job is not None and job.state == "queued" and len(job.files) == 3
    assert spool.studies() == []
    # a failed job's files move to quarantine (same 'device' here) and back
    store.next_due()
    failed = store.mark_attempt_failed(job.id, "x", 1, lambda n: 1.0,
                                       intake.quarantine_dir / job.token)
    intake.quarantine(failed)
    again = intake.retry(job.id)
    assert again is not None and all(p.is_file() for p in again.paths)


def test_interrupted_cross_device_copy_leaves_no_second_job(tmp_path: Path) -> None:
    """Crash after the copy was renamed into place, before the originals were unlinked:
    recovery deletes the identical originals, keeps a re-sent (different) and a new instance."""
    spool, store, intake = _intake(tmp_path)
    key = _fill(spool, 3)
    src = spool.study_dir(key)
    dest = tmp_path / "jobs" / "tok"
    store.begin_claim(key, "tok", dest)
    dest.mkdir(parents=True)
    for p in src.iterdir():
        (dest / p.name).write_bytes(p.read_bytes())
    spool.store("1.2", "1.2.0", b"re-sent with other bytes")
    spool.store("1.2", "1.2.7", b"a new instance")
    intake.recover()
    (job,) = store.list()
    assert job.state == "queued" and len(job.files) == 3
    left = sorted(p.read_bytes() for p in src.iterdir())
    assert left == [b"a new instance", b"re-sent with other bytes"]


def test_quarantine_across_devices_keeps_the_jobs_subfolders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job folder moved by copy (EXDEV) keeps its step records and work files, not only its
    top-level instances (found in review: the copy took files only, then deleted the rest)."""
    spool, store, intake = _intake(tmp_path)
    key = _fill(spool, 2)
    job = intake.claim(key)
    assert job is not None
    (job.dir / "steps").mkdir()
    (job.dir / "steps" / "received.json").write_text('{"n": 2}')
    (job.dir / "work" / "r0").mkdir(parents=True)
    (job.dir / "work" / "r0" / "sr.dcm").write_bytes(b"sr bytes")
    real = os.rename

    def rename(src: Any, dest: Any, *args: Any, **kwargs: Any) -> None:
        if Path(src) == job.dir:  # jobs/ and quarantine/ on different 'devices'
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(src), None, str(dest))
        real(src, dest, *args, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    store.next_due()
    failed = store.mark_attempt_failed(job.id, "x", 1, lambda n: 1.0,
                                       intake.quarantine_dir / job.token)
    intake.quarantine(failed)
    moved = intake.quarantine_dir / job.token
    assert not job.dir.exists()
    assert (moved / "steps" / "received.json").read_text() == '{"n": 2}'
    assert (moved / "work" / "r0" / "sr.dcm").read_bytes() == b"sr bytes"
    assert len([p for p in moved.iterdir() if p.is_file()]) == 2
    assert [p.name for p in moved.parent.iterdir()] == [job.token]  # no staging left
