"""Our Storage SCU into real dcmtk storescp and Orthanc; jobs, retry, quarantine, CLI."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydicom import dcmread

from node.cli import main
from node.jobs import Job
from scp import DestinationSettings, SendError, StorageSender, echo
from tests.scp.test_scp_server import store
from tests.support.nodeutil import node_config, running_node
from tests.support.peers import Orthanc, StoreSCP, free_port
from tests.support.synthetic import synthetic_ct_study, write_study

pytestmark = pytest.mark.peer


def wait_for(pred, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_send_into_dcmtk_storescp(tmp_path: Path) -> None:
    files = write_study(synthetic_ct_study(3), tmp_path / "in")
    with StoreSCP(tmp_path / "out") as scp:
        dest = DestinationSettings("STORESCP", scp.host, scp.port, "BLINDREAD")
        assert echo(dest) == 0
        report = StorageSender().send(dest, files)
        assert report.sent == 3
        got = wait_for(lambda: len(scp.received()) == 3 and scp.received())
        sent = {str(dcmread(f).SOPInstanceUID): dcmread(f).PixelData for f in files}
        for f in got:
            ds = dcmread(f)
            assert sent[str(ds.SOPInstanceUID)] == ds.PixelData


def test_send_into_orthanc(orthanc: Orthanc, tmp_path: Path) -> None:
    study = synthetic_ct_study(4)
    files = write_study(study, tmp_path / "in")
    dest = DestinationSettings(orthanc.aet, orthanc.host, orthanc.dicom_port, "BLINDREAD")
    assert StorageSender().send(dest, files).sent == 4
    found = orthanc.instances_of_study(str(study[0].StudyInstanceUID))
    assert len(found) == 4


def test_send_to_closed_port_raises(tmp_path: Path) -> None:
    dest = DestinationSettings("NOBODY", "127.0.0.1", free_port(), "BLINDREAD")
    with pytest.raises(SendError, match="association to NOBODY"):
        StorageSender().send(dest, write_study(synthetic_ct_study(1), tmp_path))


def test_completed_study_sends_result_to_orthanc(orthanc: Orthanc, tmp_path: Path) -> None:
    cfg = node_config(
        tmp_path,
        # 2 s: with 0.5 s a loaded machine split the three stores into two batches (two jobs,
        # an amended second SR), seen beside parallel work
        completion={"quiet_seconds": 2.0, "poll_seconds": 0.1},
        destinations={
            "results": {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}
        },
    )
    study = synthetic_ct_study(3)
    with running_node(cfg) as svc:
        for ds in study:
            assert store(svc.port, ds) == 0
        job = wait_for(lambda: [j for j in svc.store.list("done")])[0]
        assert len(job.files) == 3
        assert job.study == svc.pseudonyms.study(str(study[0].StudyInstanceUID))
    found = orthanc.instances_of_study(str(study[0].StudyInstanceUID))
    assert len(found) == 1  # only the result object was sent to the PACS
    tags = orthanc.get(f"/instances/{found[0]['ID']}/simplified-tags")
    assert tags["Modality"] == "SR"
    assert tags["PatientID"] == str(study[0].PatientID)


def test_failed_job_quarantined_then_retried(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dead_port = free_port()
    cfg = node_config(
        tmp_path,
        completion={"quiet_seconds": 0.3, "poll_seconds": 0.1},
        destinations={"results": {"ae_title": "DOWN", "host": "127.0.0.1", "port": dead_port}},
        sender={"max_attempts": 2, "initial_backoff_seconds": 0.2, "timeout_seconds": 2},
    )
    cfg_path = tmp_path / "node.yaml"
    import yaml

    cfg_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    calls: list[Job] = []
    with running_node(cfg) as svc:
        for ds in synthetic_ct_study(2):
            assert store(svc.port, ds) == 0
        job = wait_for(lambda: svc.store.list("failed"))[0]
        assert job.attempts == 2
        assert "association to DOWN@127.0.0.1" in (job.last_error or "")
        assert job.dir.parent == svc.paths.quarantine
        # the row names its new home first, then the folder moves (intake's order): wait for it
        wait_for(lambda: job.dir.is_dir() and not (svc.paths.jobs_dir / job.token).exists())
        assert len(list(job.dir.iterdir())) == 2
        assert not (svc.paths.jobs_dir / job.token).exists()
        assert main(["jobs", "list", "--config", str(cfg_path)]) == 0
        out = capsys.readouterr().out
        assert "failed" in out and job.study in out
        # the PACS comes back: retry succeeds
        svc.runner.action = calls.append
        assert main(["jobs", "retry", "--config", str(cfg_path), str(job.id)]) == 0
        done = wait_for(lambda: svc.store.list("done"))[0]
        assert done.id == job.id and calls and calls[0].id == job.id
        assert (svc.paths.jobs_dir / job.token).is_dir()
        assert main(["jobs", "retry", "--config", str(cfg_path), str(job.id)]) == 1


def test_cli_echo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    with StoreSCP(tmp_path / "out") as scp:
        cfg = node_config(
            tmp_path,
            destinations={
                "pacs": {"ae_title": "STORESCP", "host": "127.0.0.1", "port": scp.port},
                "down": {"ae_title": "X", "host": "127.0.0.1", "port": free_port()},
            },
        )
        p = tmp_path / "node.yaml"
        p.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
        assert main(["echo", "--config", str(p), "pacs"]) == 0
        assert "OK status 0x0000" in capsys.readouterr().out
        assert main(["echo", "--config", str(p), "down"]) == 1
        assert main(["echo", "--config", str(p), "nope"]) == 2
