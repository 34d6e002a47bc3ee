"""A full disk when the runner records a job's outcome (issue #16): the job's work is done (or
its attempt failed) but ``mark_done`` / ``mark_attempt_failed`` hit SQLite's "database or disk
is full". Before the fix the job stayed ``running`` until the next restart and ``/healthz`` said
ok; now the runner retries the transition with backoff, ``/healthz`` answers 503 with
``job_states_recorded: false`` meanwhile, and once space is back the job ends ``done`` (or
requeued, then ``done``) without a restart and without running the action again."""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from node.app import build_service
from node.jobs import Job
from node.metrics import MetricsServer, NodeMetrics
from node.service import NodeService
from tests.faults.test_intake_faults import _assert_no_phi, _health, _send, _wait
from tests.support.nodeutil import node_config
from tests.support.synthetic import synthetic_ct_study

pytestmark = pytest.mark.fault

DISK_FULL = "database or disk is full"


class FullDisk:
    """Makes one JobStore method fail with SQLite's disk-full error while :attr:`full` is set."""

    def __init__(self, svc: NodeService, method: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.full = threading.Event()
        self.full.set()
        self.attempts = 0
        real = getattr(svc.store, method)

        def failing(*args: Any, **kwargs: Any) -> Any:
            self.attempts += 1
            if self.full.is_set():
                raise sqlite3.OperationalError(DISK_FULL)
            return real(*args, **kwargs)

        monkeypatch.setattr(svc.store, method, failing)


def _service(tmp_path: Path, action: Any) -> tuple[NodeService, NodeMetrics]:
    cfg = node_config(tmp_path, completion={"quiet_seconds": 0.3, "poll_seconds": 0.05})
    metrics = NodeMetrics()
    svc = build_service(cfg, action, metrics=metrics)
    svc.runner.record_retry = (0.05, 0.2)
    return svc, metrics


def _run(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    method: str,
    action: Any,
) -> tuple[NodeService, list[Job]]:
    caplog.set_level(logging.INFO)
    svc, metrics = _service(tmp_path, action)
    disk = FullDisk(svc, method, monkeypatch)
    study = synthetic_ct_study(2, size=16)
    with MetricsServer(
        metrics.registry, port=0, health=svc.health, refresh=svc.refresh_metrics
    ) as server:
        svc.start()
        try:
            _send(svc.port, study)
            assert _wait(lambda: disk.attempts >= 1)
            assert [j.state for j in svc.store.list()] == ["running"]
            code, body = _health(server.url)
            assert code == 503 and body["checks"]["job_states_recorded"] is False, body
            tried = disk.attempts
            assert _wait(lambda: disk.attempts >= tried + 2), "nobody retried the transition"
            disk.full.clear()  # the admin freed space
            assert _wait(lambda: [j.state for j in svc.store.list()] == ["done"])
            code, body = _health(server.url)
            assert code == 200 and body["status"] == "ok", body
            jobs = svc.store.list()
        finally:
            svc.stop(timeout=5)
    _assert_no_phi(caplog, study)
    assert DISK_FULL in caplog.text and "could not be recorded" in caplog.text
    return svc, jobs


def test_mark_done_on_a_full_disk_is_retried_without_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[Job] = []
    _, jobs = _run(tmp_path, monkeypatch, caplog, "mark_done", seen.append)
    assert len(seen) == 1  # the outcome was retried, not the job
    assert jobs[0].attempts == 1 and jobs[0].last_error is None


def test_mark_attempt_failed_on_a_full_disk_is_retried_without_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[Job] = []

    def flaky(job: Job) -> None:
        seen.append(job)
        if len(seen) == 1:
            raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr("scp.SenderSettings.jittered_backoff", lambda self, n, rng=None: 0.0)
    _, jobs = _run(tmp_path, monkeypatch, caplog, "mark_attempt_failed", flaky)
    assert len(seen) == 2  # the failed attempt once, then the retry that succeeded
    assert jobs[0].attempts == 2
