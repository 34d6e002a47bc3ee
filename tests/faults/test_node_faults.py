"""The vendor and the PACS failing under a real node process (issue #16's fault suite).

Every case runs ``python -m node node run`` against the module's real vendor process and real
Orthanc with ``OverwriteInstances: false`` (``tests/faults/realnode.py``), sends a 4-image study
with dcmtk ``storescu``, breaks a peer while the job runs, and asserts

* the job's state while the peer is broken (``queued`` with the reason, from the job store) and
  a metric that moved in the node's ``/metrics``;
* once the peer is back: the job ``done`` holding every acknowledged instance, and exactly one
  SR for the study in Orthanc, current, citing every instance;
* the vendor's chain holds each job token once (no request evaluated twice);
* no planted identifier in the node's log (the session's PHI scan reads it, and the vendor's
  log, again).

Retry budgets are made small (40 job attempts, 0.3 s doubling to 1 s, no jitter: ~40 s) so an
outage of a few seconds is "shorter than the budget"; the PACS-down-longer case gives the job
2 attempts and checks the admin's way back (``blindread jobs retry``).
"""

from __future__ import annotations

import errno
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from node.audit import load_public_key, public_key_path, verify_ledger
from tests.faults.conftest import FaultLogs
from tests.faults.realnode import (
    ROOT,
    NodeProc,
    Peers,
    Study,
    assert_log_clean,
    assert_one_current_sr,
    chain_len,
    job_rows,
    make_study,
    merge,
    node_config,
    srs,
    steps,
    tmpfs,
    wait,
)

pytestmark = [pytest.mark.fault, pytest.mark.peer]

IMAGES = 4  # one vendor request per image
RETRIES = 'blindread_retries_total{step="vendor"}'


@dataclass
class Case:
    node: NodeProc
    study: Study
    state: Path

    def job(self) -> Any:
        rows = job_rows(self.state)
        return rows[0] if len(rows) == 1 else None

    def wait_job(self, what: str, cond: Any, timeout: float = 60) -> Any:
        wait(lambda: self.job() is not None and cond(self.job()), timeout, what, self.node.log)
        return self.job()

    def wait_done(self, timeout: float = 60) -> Any:
        return self.wait_job("the job to finish", lambda j: j.state == "done", timeout)


@pytest.fixture
def start_case(
    request: pytest.FixtureRequest, peers_up: Peers, tmp_path: Path, fault_logs: FaultLogs
) -> Iterator[Callable[..., Case]]:
    """Starts this case's node (config ``overrides``) with a study made for it."""
    made: list[Case] = []

    def start(overrides: dict[str, Any] | None = None) -> Case:
        base = {"sender": {"max_attempts": 40, "initial_backoff_seconds": 0.3,
                           "max_backoff_seconds": 1.0, "jitter": 0}}  # fmt: skip
        cfg, data = node_config(tmp_path, peers_up, quiet=0.6,
                                overrides=merge(base, overrides or {}))  # fmt: skip
        node = NodeProc.prepare(tmp_path, cfg, data, peers_up)
        study = make_study(tmp_path, IMAGES, seed=len(request.node.name))
        fault_logs.add(node.log, study.needles)
        made.append(Case(node, study, cfg.node.state_dir))
        node.start()
        return made[-1]

    try:
        yield start
    finally:
        for c in made:
            c.node.stop()
    for c in made:
        assert_log_clean(c.node.log, c.study.needles)


def _tokens_once(peers: Peers, since: int) -> int:
    """The vendor's chain entries after ``since``; asserts each job token appears once."""
    lines = peers.vendor_chain.read_text().splitlines()[since:]
    tokens = [json.loads(line)["job"] for line in lines]
    assert len(set(tokens)) == len(tokens), "a job token evaluated twice"
    return len(tokens)


FAST_VENDOR = {"vendors": {"demo-vendor": {"max_attempts": 2, "initial_backoff_seconds": 0.2,
                                           "max_backoff_seconds": 0.2,
                                           "connect_timeout_seconds": 2,
                                           "timeout_seconds": 2}}}  # fmt: skip


def test_vendor_killed_then_restarted(start_case: Callable[..., Case], peers_up: Peers) -> None:
    case = start_case(FAST_VENDOR)
    peers_up.signal_vendor(signal.SIGKILL)
    peers_up.vendor.wait(10)
    case.node.send(case.study.files)
    job = case.wait_job("a failed attempt", lambda j: j.attempts >= 1 and j.state == "queued")
    assert "VendorUnavailableError" in job.last_error and "ConnectError" in job.last_error, job
    assert case.node.scrape()[RETRIES] >= 1
    assert srs(peers_up.pacs, case.study.uid) == []
    before = chain_len(peers_up)
    peers_up.restart_vendor()  # same port and state dir: the hospital's context is still there
    done = case.wait_done()
    assert done.files == IMAGES and done.attempts >= 2
    assert_one_current_sr(peers_up.pacs, case.study.uid, case.study.sent)
    # >= : under load an attempt can also time out (2 s) against the freshly started vendor
    assert _tokens_once(peers_up, before) >= IMAGES


def test_vendor_stopped_mid_inference_then_continued(
    start_case: Callable[..., Case], peers_up: Peers
) -> None:
    case = start_case(FAST_VENDOR)
    before = chain_len(peers_up)
    case.node.send(case.study.files)
    wait(lambda: chain_len(peers_up) > before, 60, "the vendor's first answer", case.node.log)
    peers_up.signal_vendor(signal.SIGSTOP)  # the next request is outstanding at a frozen vendor
    served = chain_len(peers_up) - before
    assert served < IMAGES, "not mid-inference"
    job = case.wait_job("a timed-out attempt", lambda j: j.attempts >= 1 and j.state == "queued")
    assert "Timeout" in job.last_error, job  # ReadTimeout, or ConnectTimeout on a new connection
    assert case.node.scrape()[RETRIES] >= 1
    peers_up.signal_vendor(signal.SIGCONT)  # it works off the stale request, answer discarded
    done = case.wait_done()
    assert done.files == IMAGES and done.attempts >= 2
    assert_one_current_sr(peers_up.pacs, case.study.uid, case.study.sent)
    assert _tokens_once(peers_up, before) >= IMAGES + served


def test_slow_vendor_within_the_timeout_completes_in_one_attempt(
    start_case: Callable[..., Case], peers_up: Peers
) -> None:
    case = start_case({"vendors": {"demo-vendor": {"timeout_seconds": 10}}})
    before = chain_len(peers_up)
    case.node.send(case.study.files)
    wait(lambda: chain_len(peers_up) > before, 60, "the vendor's first answer", case.node.log)
    peers_up.signal_vendor(signal.SIGSTOP)
    time.sleep(1.5)  # a vendor 1.5 s late, well within the 10 s timeout
    peers_up.signal_vendor(signal.SIGCONT)
    done = case.wait_done()
    assert done.attempts == 1 and done.last_error is None, done
    assert case.node.scrape()[RETRIES] == 0
    assert_one_current_sr(peers_up.pacs, case.study.uid, case.study.sent)
    assert _tokens_once(peers_up, before) == IMAGES


def test_pacs_down_shorter_than_the_retry_budget(
    start_case: Callable[..., Case], peers_up: Peers
) -> None:
    case = start_case()
    peers_up.stop_pacs()
    case.node.send(case.study.files)
    job = case.wait_job("a failed delivery", lambda j: j.attempts >= 1 and j.state == "queued")
    assert "refused" in job.last_error.lower(), job  # says why: connection refused
    assert "r0-inference" in steps(case.state)  # inference is not redone for the re-send
    assert case.node.scrape()['blindread_retries_total{step="deliver"}'] >= 1
    peers_up.restart_pacs()
    done = case.wait_done()
    assert done.files == IMAGES and done.attempts >= 2
    assert_one_current_sr(peers_up.pacs, case.study.uid, case.study.sent)


def test_pacs_down_longer_than_the_retry_budget_then_jobs_retry(
    start_case: Callable[..., Case], peers_up: Peers
) -> None:
    case = start_case({"sender": {"max_attempts": 2, "initial_backoff_seconds": 0.2}})
    peers_up.stop_pacs()
    case.node.send(case.study.files)
    job = case.wait_job("the job to fail", lambda j: j.state == "failed")
    assert job.attempts == 2 and "refused" in job.last_error.lower(), job
    metrics = case.node.scrape()
    wait(lambda: case.node.scrape().get('blindread_jobs{state="failed"}') == 1.0, 10,
         "jobs{state=failed} in /metrics")  # fmt: skip
    assert metrics['blindread_sr_deliveries_total{outcome="failure"}'] >= 1, metrics
    quarantined = list((case.state / "quarantine").rglob("*.dcm"))
    assert len(quarantined) >= IMAGES  # nothing lost: the study's files wait in quarantine
    peers_up.restart_pacs()
    # the admin's way back (docs/reliability.md): requeue it; the running node finishes it
    r = subprocess.run(
        [sys.executable, "-m", "node", "jobs", "retry", "--config", str(case.node.cfg_path),
         str(job.id)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    done = case.wait_done()
    assert done.files == IMAGES
    assert_one_current_sr(peers_up.pacs, case.study.uid, case.study.sent)

# ---------------------------------------------------------------------- a full state dir


@pytest.fixture
def statefs(tmp_path: Path) -> Iterator[Path]:
    """A real 8 MiB tmpfs for this case (unmounted after the node is stopped)."""
    with tmpfs(tmp_path / "statefs", "8m") as mnt:
        yield mnt


def _fill(fs: Path) -> Path:
    """Fill ``fs`` to the last block; the filler file is returned (unlink it to free)."""
    filler = fs / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as fh:  # unbuffered: nothing left to flush at close
        try:
            while True:  # a short write near the end, then ENOSPC
                fh.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


def test_state_dir_fills_up_during_the_job_then_space_returns(
    statefs: Path, start_case: Callable[..., Case], peers_up: Peers, tmp_path: Path
) -> None:
    """``node.state_dir`` (job store, job folders, step records, spool, audit ledger) on a real
    8 MiB tmpfs, filled to the last block once de-id is recorded (inference under way)."""
    case = start_case({
        "node": {"state_dir": str(statefs / "state"), "key_dir": str(tmp_path / "keys")},
        "scp": {"min_free_bytes": 256 * 1024},
        "sender": {"max_attempts": 40},
    })  # fmt: skip
    case.node.send(case.study.files)
    wait(lambda: "r0-deid" in steps(case.state), 60, "the de-id record", case.node.log)
    filler = _fill(statefs)
    try:
        seen: dict[str, Any] = {}

        def troubled() -> bool:
            status, checks = case.node.healthz()
            job = case.job()
            seen.update(status=status, checks=checks, job=job)
            recorded_failure = job is not None and job.attempts >= 1 and job.state == "queued"
            return status == 503 and (recorded_failure or not checks["job_states_recorded"])

        wait(troubled, 40, "the full disk to show in /healthz and the job", case.node.log)
        checks, job = seen["checks"], seen["job"]
        assert checks["state_dir_above_watermark"] is False, seen
        assert checks["spool_above_watermark"] is False, seen
        if checks["job_states_recorded"]:  # the failed attempt was recorded before the fill
            assert job.state == "queued" and "ENOSPC" in (job.last_error or ""), job
        else:  # the usual case: the attempt failed (ENOSPC), and so did recording it
            assert job.state == "running", job
            metrics = case.node.scrape()
            assert metrics["blindread_job_states_unrecorded"] == 1, metrics
        assert srs(peers_up.pacs, case.study.uid) == []
    finally:
        filler.unlink()
    done = case.wait_done(90)
    assert done.files == IMAGES
    assert_one_current_sr(peers_up.pacs, case.study.uid, case.study.sent)
    status, checks = case.node.healthz()
    assert status == 200, checks
    assert case.node.scrape()["blindread_job_states_unrecorded"] == 0
    cfg = case.node.cfg
    report = verify_ledger(cfg.audit_ledger, load_public_key(public_key_path(cfg.audit_ledger)),
                           anchor=cfg.audit_anchor)  # fmt: skip
    assert report.ok, report.describe()
