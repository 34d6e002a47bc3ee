"""A full disk at study completion (issue #16, defect 2), on a running node with its real SCP
and metrics endpoint: the spool batch was renamed into the jobs directory, then the job store's
update failed with SQLite's "database or disk is full". While the disk stays full the job is
counted as ``claiming`` in ``/metrics`` and ``/healthz`` answers 503; once space is back the
runner finishes the claim and the job runs, with no restart. The same after a restart that
happens while the disk is still full (the start-up must not fail)."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE

from node.app import build_service
from node.jobs import Job
from node.metrics import MetricsServer, NodeMetrics
from node.service import NodeService
from tests.faults.realnode import tmpfs
from tests.support.nodeutil import node_config
from tests.support.synthetic import synthetic_ct_study

pytestmark = pytest.mark.fault

DISK_FULL = "database or disk is full"


class DiskFull:
    """Makes the job store's claim update fail while :attr:`full` is set."""

    def __init__(self) -> None:
        self.full = threading.Event()
        self.full.set()
        self.attempts = 0

    def install(self, svc: NodeService, monkeypatch: pytest.MonkeyPatch) -> None:
        real = svc.store.finish_claim

        def finish_claim(job_id: int, files: list[str]) -> Job:
            self.attempts += 1
            if self.full.is_set():
                raise sqlite3.OperationalError(DISK_FULL)
            return real(job_id, files)

        monkeypatch.setattr(svc.store, "finish_claim", finish_claim)


def _service(tmp_path: Path, seen: list[Job]) -> tuple[NodeService, NodeMetrics]:
    cfg = node_config(tmp_path, completion={"quiet_seconds": 0.3, "poll_seconds": 0.05})
    metrics = NodeMetrics()
    svc = build_service(cfg, seen.append, metrics=metrics)
    svc.runner.claim_retry = (0.1, 0.4)
    return svc, metrics


@contextmanager
def _endpoint(svc: NodeService, metrics: NodeMetrics) -> Iterator[str]:
    with MetricsServer(metrics.registry, port=0, health=svc.health,
                       refresh=svc.refresh_metrics) as server:
        yield server.url


def _send(port: int, study: list[Dataset]) -> None:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(study[0].SOPClassUID, [study[0].file_meta.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", port, ae_title="BLINDREAD")
    assert assoc.is_established
    try:
        for ds in study:
            assert int(assoc.send_c_store(ds).Status) == 0
    finally:
        assoc.release()


def _claiming_gauge(url: str) -> float:
    text = urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode()
    (line,) = [ln for ln in text.splitlines() if ln.startswith('blindread_jobs{state="claiming"}')]
    return float(line.split()[-1])


def _health(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _wait(cond: Callable[[], bool], timeout: float = 15.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def _assert_stuck(svc: NodeService, url: str, disk: DiskFull) -> None:
    assert _wait(lambda: svc.intake.stuck_claims() == 1)
    assert svc.spool.studies() == []  # the rename happened: the batch left the spool
    assert _claiming_gauge(url) == 1.0  # was 0 before the fix
    code, body = _health(url)
    assert code == 503 and body["checks"]["no_stuck_claims"] is False  # was 200 "ok"
    tried = disk.attempts
    assert _wait(lambda: disk.attempts > tried), "nobody retried the stuck claim"


def _assert_recovered(svc: NodeService, url: str, seen: list[Job], n: int) -> None:
    assert _wait(lambda: [j.state for j in svc.store.list()] == ["done"])
    assert len(seen) == 1 and len(seen[0].files) == n
    assert all(p.is_file() for p in seen[0].paths)
    assert _claiming_gauge(url) == 0.0
    code, body = _health(url)
    assert code == 200 and body["status"] == "ok", body


def _assert_no_phi(caplog: pytest.LogCaptureFixture, study: list[Dataset]) -> None:
    text = caplog.text
    assert DISK_FULL in text  # the admin sees why
    for ds in study:
        for value in (ds.StudyInstanceUID, ds.SOPInstanceUID, ds.PatientID, "SYNTHETIC"):
            assert str(value) not in text


def test_disk_full_at_completion_is_visible_and_recovered_without_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    seen: list[Job] = []
    svc, metrics = _service(tmp_path, seen)
    disk = DiskFull()
    disk.install(svc, monkeypatch)
    study = synthetic_ct_study(3, size=16)
    with _endpoint(svc, metrics) as url:
        svc.start()
        try:
            _send(svc.port, study)
            _assert_stuck(svc, url, disk)
            disk.full.clear()  # the admin freed space
            _assert_recovered(svc, url, seen, 3)
        finally:
            svc.stop(timeout=5)
    _assert_no_phi(caplog, study)


def test_restart_while_the_disk_is_still_full_starts_and_recovers_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    seen: list[Job] = []
    svc, _ = _service(tmp_path, seen)
    disk = DiskFull()
    disk.install(svc, monkeypatch)
    study = synthetic_ct_study(2, size=16)
    svc.start()
    try:
        _send(svc.port, study)
        assert _wait(lambda: svc.intake.stuck_claims() == 1)
    finally:
        svc.stop(timeout=5)

    again, metrics = _service(tmp_path, seen)
    disk.install(again, monkeypatch)
    with _endpoint(again, metrics) as url:
        again.start()  # recovery at start-up meets the full disk and must not raise
        try:
            _assert_stuck(again, url, disk)
            disk.full.clear()
            _assert_recovered(again, url, seen, 2)
        finally:
            again.stop(timeout=5)
    _assert_no_phi(caplog, study)


def test_spool_on_a_real_tmpfs_fills_during_ingest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The state dir (and so the spool) on a real 3 MiB tmpfs, watermark 0: a 40 x 128 kB study
    in one association fills it half-way through. Every C-STORE is answered 0x0000 (stored,
    durable) until the file system is full, then 0xA700 (out of resources); every acknowledged
    instance is in the spool whole, nothing half-written stays, the refusals are counted."""
    with tmpfs(tmp_path / "fs", "3m") as fs:
        cfg = node_config(tmp_path, node={"state_dir": str(fs / "state")})
        metrics = NodeMetrics()
        svc = build_service(cfg, lambda job: None, metrics=metrics)
        svc.start()
        try:
            study = synthetic_ct_study(40, size=256)
            ae = AE(ae_title="MODALITY")
            ae.add_requested_context(study[0].SOPClassUID, [study[0].file_meta.TransferSyntaxUID])
            assoc = ae.associate("127.0.0.1", svc.port, ae_title="BLINDREAD")
            assert assoc.is_established
            try:
                codes = [int(assoc.send_c_store(ds).Status) for ds in study]
            finally:
                assoc.release()
            acked = [str(ds.SOPInstanceUID) for ds, c in zip(study, codes, strict=True) if c == 0]
            assert set(codes) == {0x0000, 0xA700}, codes
            assert codes == sorted(codes), codes  # acknowledged until full, refused after
            files = list(svc.spool.root.rglob("*.dcm"))
            assert len(files) == len(acked)
            assert {str(dcmread(p).SOPInstanceUID) for p in files} == set(acked)
            leftovers = [p for p in svc.spool.root.rglob("*") if p.is_file() and p.suffix != ".dcm"]
            assert leftovers == [], leftovers  # no partial file of a refused instance
            refused = metrics.registry.get_sample_value(
                "blindread_instances_refused_total", {"reason": "spool_full"}
            )
            assert refused == codes.count(0xA700)
        finally:
            svc.stop(timeout=5)
    assert "full" in caplog.text
