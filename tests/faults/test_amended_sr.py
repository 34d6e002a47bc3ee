"""Issue #16, defect 1: a result amended for late images reaches a PACS that keeps the first
copy of every SOP Instance UID (Orthanc's default, ``OverwriteInstances: false``).

A study is sent and completed (SR 1 and its summary image reach Orthanc), a crash-resend of
that result (its SR rebuilt and sent again) adds nothing, then late images complete a second
job: Orthanc must hold the amended SR (new UID, same series, Instance Number 2, SR 1 in
Predecessor Documents Sequence, every image covered) and exactly one *current* SR, the one no
other SR names as predecessor; the amended SR's own crash-resend keeps its UID too.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import Comprehensive3DSRStorage, SecondaryCaptureImageStorage

from node.config import NodeConfig, parse_model
from node.deid import DeidKeys
from node.demo.phantom_study import phantom_cr_study
from node.demo.stack import DEMO_MODEL_DIR
from node.intake import Intake
from node.jobs import Job, JobStore
from node.metrics import NodeMetrics
from node.netsettings import sender_settings
from node.pipeline import Pipeline
from node.pseudonym import Pseudonymizer
from node.runner import JobRunner
from node.sr import read_result_sr
from node.vault import IdentifierVault
from scp import Spool, StorageSender
from tests.support.local_backend import LocalBackend
from tests.support.peers import Orthanc

pytestmark = [pytest.mark.fault, pytest.mark.peer]

KEY = b"a" * 32


def _cfg(tmp: Path, pacs: Orthanc) -> NodeConfig:
    return parse_model(
        {
            "node": {"state_dir": str(tmp / "state")},
            "destinations": {
                "pacs": {"ae_title": pacs.aet, "host": pacs.host, "port": pacs.dicom_port}
            },
            "sender": {
                "max_attempts": 2,
                "initial_backoff_seconds": 0.01,
                "max_backoff_seconds": 0.02,
                "timeout_seconds": 10,
            },
            "sr": {"secondary_capture": True},
            "vendors": {
                "v": {
                    "url": "https://127.0.0.1:1",
                    "client_cert": "/x",
                    "client_key": "/x",
                    "ca": "/x",
                    "models": ["demo-lesion"],
                }
            },
            "routes": [
                {
                    "name": "cxr",
                    "match": {"attribute": "Modality", "equals": "CR"},
                    "action": {
                        "infer": {"vendor": "v", "model": "demo-lesion", "destinations": ["pacs"]}
                    },
                }
            ],
        },
        NodeConfig,
    )


def _results(pacs: Orthanc, study_uid: str) -> tuple[list[Dataset], list[Dataset]]:
    """The SRs and summary images Orthanc holds for the study (headers)."""
    srs, scs = [], []
    for inst in pacs.instances_of_study(study_uid):
        ds = pydicom.dcmread(io.BytesIO(pacs.file(inst["ID"])), stop_before_pixels=True)
        if ds.SOPClassUID == Comprehensive3DSRStorage:
            srs.append(ds)
        elif ds.SOPClassUID == SecondaryCaptureImageStorage:
            scs.append(ds)
    return srs, scs


def _resend_after_crash(pipeline: Pipeline, job: Job) -> None:
    """As if the node died after sending the SR, before it recorded the SR step: the SR is
    rebuilt from the stored inference result and sent again."""
    steps = job.dir / "steps"
    for name in ("r0-sr.json", "r0-deliver-pacs.json"):
        (steps / name).unlink()
    pipeline(job)


def _spool(spool: Spool, study: list[Dataset], tmp: Path) -> None:
    for ds in study:
        path = tmp / "in.dcm"
        ds.save_as(path, enforce_file_format=True)
        spool.store(str(ds.StudyInstanceUID), str(ds.SOPInstanceUID), path.read_bytes())


def test_amended_result_reaches_a_pacs_that_does_not_overwrite(tmp_path: Path) -> None:
    backend = LocalBackend(DEMO_MODEL_DIR / "manifest.yaml", tmp_path / "ckks")
    with Orthanc(tmp_path / "orthanc", overwrite_instances=False) as pacs:
        cfg = _cfg(tmp_path, pacs)
        spool = Spool(tmp_path / "spool", Pseudonymizer(KEY).study, fsync=False)
        store = JobStore(tmp_path / "jobs.sqlite")
        intake = Intake(spool, store, tmp_path / "jobs", tmp_path / "quarantine")
        pipeline = Pipeline(
            cfg,
            pseudonyms=Pseudonymizer(KEY),
            deid_keys=DeidKeys(KEY, b"d" * 32),
            vault=IdentifierVault(tmp_path / "vault.sqlite", b"v" * 32),
            sender=StorageSender(sender_settings(cfg)),
            backends=lambda name: backend,
            uid_key=KEY,
            jobs=store,
            metrics=NodeMetrics(),
        )
        runner = JobRunner(store, intake, pipeline, sender_settings(cfg))
        study = phantom_cr_study([False, False], seed=5, size=128)
        study_uid = str(study[0].StudyInstanceUID)

        # 1. the study completes: SR 1 and summary 1 in PACS
        _spool(spool, study, tmp_path)
        job1 = intake.claim(spool.study_key(study_uid))
        assert job1 is not None
        done = runner.run_once()
        assert done is not None and done.state == "done"
        [sr1], [sc1] = _results(pacs, study_uid)
        assert int(sr1.InstanceNumber) == 1 and "PredecessorDocumentsSequence" not in sr1

        # 2. a crash-resend of the same result keeps its UIDs: nothing is added
        _resend_after_crash(pipeline, job1)
        srs, scs = _results(pacs, study_uid)
        assert [d.SOPInstanceUID for d in srs] == [sr1.SOPInstanceUID]
        assert [d.SOPInstanceUID for d in scs] == [sc1.SOPInstanceUID]

        # 3. late images complete a second job of the same study
        late = phantom_cr_study([True, False], seed=9, size=128, study_uid=study_uid)
        _spool(spool, late, tmp_path)
        job2 = intake.claim(spool.study_key(study_uid))
        assert job2 is not None and job2.id != job1.id
        done = runner.run_once()
        assert done is not None and done.id == job2.id and done.state == "done"
        srs, scs = _results(pacs, study_uid)
        assert len(srs) == 2 and len(scs) == 2
        [sr2] = [d for d in srs if d.SOPInstanceUID != sr1.SOPInstanceUID]
        everything = {str(d.SOPInstanceUID) for d in [*study, *late]}
        report = read_result_sr(pydicom.dcmread(io.BytesIO(_file_of(pacs, sr2))))
        assert {u for f in report.findings for u in f.source_sop_instance_uids} == everything
        assert report.revision == 2 and report.predecessor_uids == (str(sr1.SOPInstanceUID),)
        assert sr2.SeriesInstanceUID == sr1.SeriesInstanceUID  # amendments share the series
        [pred_study] = sr2.PredecessorDocumentsSequence
        assert pred_study.StudyInstanceUID == study_uid
        [pred_series] = pred_study.ReferencedSeriesSequence
        assert pred_series.SeriesInstanceUID == sr1.SeriesInstanceUID
        [pred] = pred_series.ReferencedSOPSequence
        assert pred.ReferencedSOPClassUID == sr1.SOPClassUID
        assert pred.ReferencedSOPInstanceUID == sr1.SOPInstanceUID
        # exactly one current SR: the one no other SR supersedes
        superseded = {u for d in srs for u in read_result_sr(_full(pacs, d)).predecessor_uids}
        assert [d.SOPInstanceUID for d in srs if d.SOPInstanceUID not in superseded] == [
            sr2.SOPInstanceUID
        ]
        # the summary image follows the same rule: a new one, same series, the next number
        [sc2] = [d for d in scs if d.SOPInstanceUID != sc1.SOPInstanceUID]
        assert sc2.SeriesInstanceUID == sc1.SeriesInstanceUID and int(sc2.InstanceNumber) == 2

        # 4. the amended result's own crash-resend keeps its UIDs
        _resend_after_crash(pipeline, job2)
        srs, scs = _results(pacs, study_uid)
        assert {d.SOPInstanceUID for d in srs} == {sr1.SOPInstanceUID, sr2.SOPInstanceUID}
        assert {d.SOPInstanceUID for d in scs} == {sc1.SOPInstanceUID, sc2.SOPInstanceUID}
        rebuilt = pydicom.dcmread(next((job2.dir / "work" / "r0" / "sr").glob("result-0.dcm")))
        assert rebuilt.SOPInstanceUID == sr2.SOPInstanceUID and int(rebuilt.InstanceNumber) == 2


def _file_of(pacs: Orthanc, ds: Dataset) -> bytes:
    [found] = pacs.post(
        "/tools/find",
        {"Level": "Instance", "Query": {"SOPInstanceUID": str(ds.SOPInstanceUID)}},
    )
    return pacs.file(str(found))


def _full(pacs: Orthanc, ds: Dataset) -> Any:
    return pydicom.dcmread(io.BytesIO(_file_of(pacs, ds)))
