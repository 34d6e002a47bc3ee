"""Retention: files of finished jobs are deleted after node.keep_finished_jobs_days; the job
record stays; failed (quarantined) jobs are never touched; the CLI does the same on demand."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from node.cli import main
from node.demo.phantom_study import phantom_cr_study
from node.intake import Intake
from node.jobs import JobStore
from node.pseudonym import Pseudonymizer
from node.runner import JobRunner
from scp import SenderSettings, Spool

DAY = 86400.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _job(tmp: Path, spool: Spool, intake: Intake, seed: int) -> int:
    ds = phantom_cr_study([False], seed=seed, size=32)[0]
    path = tmp / "x.dcm"
    ds.save_as(path, enforce_file_format=True)
    spool.store(str(ds.StudyInstanceUID), str(ds.SOPInstanceUID), path.read_bytes())
    job = intake.claim(spool.study_key(str(ds.StudyInstanceUID)))
    assert job is not None
    return job.id


def test_finished_job_files_are_deleted_after_the_retention_period(tmp_path: Path) -> None:
    clock = Clock()
    spool = Spool(tmp_path / "spool", Pseudonymizer(b"k" * 32).study, fsync=False)
    store = JobStore(tmp_path / "jobs.sqlite", clock=clock)
    intake = Intake(spool, store, tmp_path / "jobs", tmp_path / "quarantine")
    done_id = _job(tmp_path, spool, intake, 1)
    failed_id = _job(tmp_path, spool, intake, 2)

    def action(job: object) -> None:
        if getattr(job, "id", None) == failed_id:
            raise RuntimeError("PACS down")

    runner = JobRunner(store, intake, action, SenderSettings(max_attempts=1))
    runner.run_once()
    runner.run_once()
    done, failed = store.get(done_id), store.get(failed_id)
    assert done is not None and done.state == "done" and done.dir.is_dir()
    assert failed is not None and failed.state == "failed" and failed.dir.is_dir()

    clock.now += 6 * DAY
    assert intake.purge_done(7 * DAY) == 0 and done.dir.is_dir()
    clock.now += 2 * DAY
    assert intake.purge_done(7 * DAY) == 1
    after = store.get(done_id)
    assert after is not None and after.state == "done" and after.files == ()
    assert not done.dir.exists()
    assert failed.dir.is_dir() and len(list(failed.dir.iterdir())) == 1  # quarantine kept
    assert intake.purge_done(7 * DAY) == 0  # idempotent
    store.close()


def test_cli_purge(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "node.yaml"
    cfg.write_text(yaml.safe_dump({"node": {"state_dir": str(tmp_path / "state")}}))
    # no state yet: a usage error, nothing created (issue #14)
    assert main(["jobs", "purge", "--config", str(cfg), "--older-than", "7"]) == 2
    assert not (tmp_path / "state").exists()
    capsys.readouterr()
    from node.jobs import JobStore

    JobStore(tmp_path / "state" / "jobs.sqlite").close()
    assert main(["jobs", "purge", "--config", str(cfg), "--older-than", "7"]) == 0
    assert "deleted the files of 0 finished job(s)" in capsys.readouterr().out
    assert main(["jobs", "purge", "--config", str(cfg), "--older-than", "0"]) == 2


def test_describe_error_gives_errno_and_strerror_without_the_path() -> None:
    """#16.9: a job error reads ``OSError: [ENOSPC] No space left on device``, not a bare
    ``OSError``, and never the file name (it may hold a pseudonym or a library's path)."""
    import errno

    from node.jobs import describe_error

    path = "/var/lib/blindread/jobs/s-1a2b3c/secret-name.dcm"
    err = describe_error(OSError(errno.ENOSPC, "No space left on device", path))
    assert err == "OSError: [ENOSPC] No space left on device"
    refused = describe_error(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"))
    assert refused == "ConnectionRefusedError: [ECONNREFUSED] Connection refused"
    assert describe_error(OSError("no errno: /some/path")) == "OSError"
    assert describe_error(ValueError("PatientName=Doe^Jane")) == "ValueError"


def test_describe_error_keeps_only_the_vendor_links_messages_of_secure_infer() -> None:
    """The vendor link's errors name a route and a reason, so their text is kept; other
    secure_infer errors (a chain file's path, a manifest's content) are recorded by type."""
    from node.jobs import describe_error
    from secure_infer import ChainError, ManifestError, VendorUnavailableError

    outage = VendorUnavailableError("POST /models/m/infer failed after 2 attempts: ConnectError")
    assert describe_error(outage) == (
        "VendorUnavailableError: POST /models/m/infer failed after 2 attempts: ConnectError"
    )
    assert describe_error(ChainError("/srv/vendor/chain.jsonl line 3: bad hash")) == "ChainError"
    assert describe_error(ManifestError("manifest.yaml", ["name: 'x'"])) == "ManifestError"
