"""Issue #14: one retry layer (a down vendor fails a job after the runner's tries only, not
5 x 5), several workers (a slow job does not block the others), paused peers hold jobs back
without spending attempts, and end-to-end latencies are counted once jobs finish."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from node.intake import Intake
from node.jobs import Job, JobStore
from node.metrics import NodeMetrics
from node.pauses import Pauses
from node.runner import JobRunner
from node.vendors import VendorBackends
from scp import SenderSettings, Spool
from secure_infer.vendor import certs
from tests.scp.test_scp_server import store as c_store
from tests.support.nodeutil import node_config, running_node
from tests.support.peers import free_port
from tests.support.synthetic import synthetic_ct_study


def _intake(tmp_path: Path) -> tuple[Spool, JobStore, Intake]:
    spool = Spool(tmp_path / "spool", lambda uid: f"k{abs(hash(uid)) % 10**12}", fsync=False)
    store = JobStore(tmp_path / "jobs.sqlite")
    return spool, store, Intake(spool, store, tmp_path / "jobs", tmp_path / "quarantine")


def _job(spool: Spool, intake: Intake, study: str) -> Job:
    spool.store(study, f"{study}.1", b"instance")
    job = intake.claim(spool.study_key(study))
    assert job is not None
    return job


def _wait(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def test_a_slow_job_does_not_block_the_others(tmp_path: Path) -> None:
    spool, store, intake = _intake(tmp_path)
    slow, fast = _job(spool, intake, "1.2.1"), _job(spool, intake, "1.2.2")
    release = threading.Event()

    def action(job: Job) -> None:
        if job.id == slow.id:
            release.wait(20)

    runner = JobRunner(store, intake, action, SenderSettings(), poll_seconds=0.02, workers=2)
    runner.start()
    try:
        assert _wait(lambda: (store.get(fast.id) or slow).state == "done")
        assert (store.get(slow.id) or fast).state == "running"
        assert [r.job.id for r in runner.running()] == [slow.id]
        assert runner.alive()
    finally:
        release.set()
        runner.stop()
    assert store.get(slow.id) is not None and store.counts()["done"] == 2


def _down_vendor_cfg(tmp_path: Path, **vendor: object) -> object:
    certs.create_ca(tmp_path / "ca")
    pair = certs.issue_client_cert(tmp_path / "ca", tmp_path / "tls", "hospital-a")
    return node_config(tmp_path, vendors={"acme": {
        "url": f"https://127.0.0.1:{free_port()}",  # nobody listens
        "client_cert": str(pair.cert), "client_key": str(pair.key),
        "ca": str(tmp_path / "ca" / "ca.crt"), "models": ["m"], **vendor,
    }})  # fmt: skip


def test_down_vendor_fails_the_job_after_the_runners_tries_only(tmp_path: Path) -> None:
    """Before: the client's 5 tries (1+2+4+8 s of sleep) ran inside each of the runner's tries,
    so 3 job attempts took ~45 s and made 15 connection attempts."""
    cfg = _down_vendor_cfg(tmp_path)
    spool, store, intake = _intake(tmp_path)
    job = _job(spool, intake, "1.2.3")
    metrics = NodeMetrics()
    backends = VendorBackends(cfg, tmp_path / "keys", metrics=metrics)  # type: ignore[arg-type]
    tries: list[float] = []

    def action(j: Job) -> None:
        tries.append(time.monotonic())
        backends("acme").manifest("m")

    retry = SenderSettings(max_attempts=3, initial_backoff_seconds=0.01, jitter=0)
    runner = JobRunner(store, intake, action, retry, poll_seconds=0.01)
    start = time.monotonic()
    try:
        while (store.get(job.id) or job).state != "failed" and time.monotonic() - start < 60:
            runner.run_once()
            time.sleep(0.01)
    finally:
        backends.close()
    failed = store.get(job.id)
    assert failed is not None and failed.state == "failed" and failed.attempts == 3
    assert "VendorUnavailableError" in (failed.last_error or "")
    assert "after 1 attempts" in (failed.last_error or "")
    assert len(tries) == 3
    assert metrics.registry.get_sample_value("blindread_retries_total", {"step": "vendor"}) == 0
    assert time.monotonic() - start < 10


def test_paused_vendor_holds_the_job_back_without_an_attempt(tmp_path: Path) -> None:
    cfg = _down_vendor_cfg(tmp_path)
    spool, store, intake = _intake(tmp_path)
    _job(spool, intake, "1.2.4")
    pauses = Pauses(tmp_path / "paused.json")
    pauses.set("vendor", "acme", True)
    backends = VendorBackends(cfg, tmp_path / "keys", pauses=pauses)  # type: ignore[arg-type]
    runner = JobRunner(store, intake, lambda j: backends("acme").manifest("m"),
                       SenderSettings(max_attempts=1), poll_seconds=0.01)  # fmt: skip
    held = runner.run_once()
    assert held is not None and held.state == "queued" and held.attempts == 0
    assert "vendor acme is paused" in (held.last_error or "")
    assert held.next_attempt_at > time.time() + 10
    # the pause survives a restart (it is in the state directory), and resuming clears it
    assert Pauses(tmp_path / "paused.json").is_paused("vendor", "acme")
    pauses.set("vendor", "acme", False)
    assert not Pauses(tmp_path / "paused.json").is_paused("vendor", "acme")
    with pytest.raises(ValueError):
        pauses.set("printer", "x", True)


def test_step_latencies_counted_after_jobs_finish(tmp_path: Path) -> None:
    """``blindread_step_seconds_count{step="total"}`` (and ``receive``, ``completion``) stayed 0
    after jobs finished."""
    cfg = node_config(tmp_path, completion={"quiet_seconds": 0.3, "poll_seconds": 0.05})
    metrics = NodeMetrics()
    done: list[Job] = []
    from node.app import build_service

    svc = build_service(cfg, done.append, metrics=metrics)
    svc.start()
    try:
        for ds in synthetic_ct_study(2):
            assert c_store(svc.port, ds) == 0
        assert _wait(lambda: svc.store.counts()["done"] == 1)
        time.sleep(0.1)
    finally:
        svc.stop(timeout=5)
    sample = metrics.registry.get_sample_value
    for step in ("receive", "completion", "total"):
        assert sample("blindread_step_seconds_count", {"step": step}) == 1, step
    total = sample("blindread_step_seconds_sum", {"step": "total"}) or 0.0
    completion = sample("blindread_step_seconds_sum", {"step": "completion"}) or 0.0
    assert completion >= 0.25 and total >= completion  # the quiet period is part of both


def test_running_node_reports_alive_workers(tmp_path: Path) -> None:
    cfg = node_config(tmp_path, node={"state_dir": str(tmp_path / "s"), "workers": 3})
    with running_node(cfg) as svc:
        assert svc.runner_alive() and len(svc.runner._threads) == 3
        assert svc.health().status == "ok"
    assert not svc.runner_alive()


def test_per_vendor_concurrency_is_bounded(tmp_path: Path) -> None:
    """``vendors.<name>.max_concurrent_jobs``: at most that many jobs use a vendor at once
    (each holds one client); the others wait for a client to be free."""
    from node.vendors import PooledBackend

    lock = threading.Lock()
    now = [0]
    peak = [0]
    made: list[object] = []

    class FakeClient:
        def manifest(self, model: str) -> str:
            with lock:
                now[0] += 1
                peak[0] = max(peak[0], now[0])
            time.sleep(0.05)
            with lock:
                now[0] -= 1
            return model

    def make() -> FakeClient:
        made.append(FakeClient())
        return made[-1]  # type: ignore[return-value]

    pool = PooledBackend(make, 2)  # type: ignore[arg-type]
    threads = [threading.Thread(target=pool.manifest, args=("m",)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert peak[0] == 2 and len(made) == 2 and pool.in_use() == 0
