"""Spool and jobs directory on two real file systems (issue #16, defect 4): ``config check``
and the node's start-up refuse it with both YAML paths named; the intake itself still moves a
batch (by copy) if it meets EXDEV. Uses /dev/shm (tmpfs) against the tmp_path disk."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from node.app import build_service
from node.cli import main
from node.config import ConfigError, NodeConfig, parse_model
from node.intake import Intake
from node.jobs import JobStore
from scp import Spool
from tests.support.peers import IN_CI, free_port

SHM = Path("/dev/shm")


@pytest.fixture
def other_fs(tmp_path: Path) -> Iterator[Path]:
    """A fresh directory on another file system than ``tmp_path`` (removed afterwards)."""
    if not SHM.is_dir():
        if IN_CI:
            pytest.fail("/dev/shm is missing: the two-file-system case cannot run")
        pytest.skip("/dev/shm is missing")
    if os.stat(SHM).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("/dev/shm and tmp_path are on the same device here")
    d = SHM / f"blindread-test-{uuid.uuid4().hex}"
    d.mkdir(mode=0o700)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _yaml(tmp_path: Path, spool: Path | None) -> Path:
    data: dict[str, object] = {"node": {"state_dir": str(tmp_path / "state")}}
    if spool is not None:
        data["scp"] = {"spool_dir": str(spool), "min_free_bytes": 0}
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_config_check_refuses_a_spool_on_another_file_system(
    tmp_path: Path, other_fs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spool = other_fs / "spool"  # does not exist yet: judged by /dev/shm's device
    assert main(["config", "check", str(_yaml(tmp_path, spool))]) == 2
    out = capsys.readouterr().out
    assert "INVALID (1 problem(s))" in out
    (line,) = [ln.strip() for ln in out.splitlines() if "spool_dir" in ln]
    assert line.startswith(f"scp.spool_dir: {spool} is on another file system")
    assert "node.state_dir" in line and str(tmp_path / "state" / "jobs") in line
    assert "set scp.spool_dir to a directory on the file system of node.state_dir" in line
    # the same config with the spool beside the state: fine (directories need not exist yet)
    assert main(["config", "check", str(_yaml(tmp_path, tmp_path / "elsewhere" / "spool"))]) == 0
    assert main(["config", "check", str(_yaml(tmp_path, None))]) == 0


def test_node_start_refuses_a_spool_on_another_file_system(
    tmp_path: Path, other_fs: Path
) -> None:
    cfg = parse_model(
        {
            "node": {"state_dir": str(tmp_path / "state")},
            "scp": {"spool_dir": str(other_fs / "spool"), "port": free_port(), "min_free_bytes": 0},
        },
        NodeConfig,
    )
    svc = build_service(cfg, lambda job: None)
    try:
        with pytest.raises(ConfigError) as err:
            svc.start()
        assert err.value.problems[0].startswith("scp.spool_dir: ")
    finally:
        svc.stop(timeout=2)


def test_intake_moves_a_batch_across_real_file_systems(tmp_path: Path, other_fs: Path) -> None:
    spool = Spool(other_fs / "spool", lambda uid: f"k{abs(hash(uid)) % 10**12}", fsync=False)
    store = JobStore(tmp_path / "jobs.sqlite")
    intake = Intake(spool, store, tmp_path / "jobs", tmp_path / "quarantine")
    for i in range(3):
        spool.store("1.2", f"1.2.{i}", b"x" * i)
    job = intake.claim(spool.study_key("1.2"))  # a real EXDEV from the spool's rename
    assert job is not None and len(job.files) == 3 and all(p.is_file() for p in job.paths)
    assert spool.studies() == []
    # a crash before the rename of a second batch: recovery at start-up copies it too
    spool.store("1.3", "1.3.1", b"late")
    key = spool.study_key("1.3")
    store.begin_claim(key, "tok", tmp_path / "jobs" / "tok")
    intake.recover()
    assert [(j.state, len(j.files)) for j in store.list()] == [("queued", 3), ("queued", 1)]
    assert spool.studies() == []
