"""The pipeline: each step persisted and resumed, never repeated; vendor outage -> retries ->
failed -> requeued -> done; PACS outage -> resumed at delivery with the same SR.

Inference runs the real CKKS session and vendor evaluator in process (tests/local_backend.py);
the network path is covered by tests/test_e2e.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest

from node.audit import AuditLedger
from node.config import NodeConfig, parse_model
from node.deid import DeidKeys
from node.demo.phantom_study import phantom_cr_study
from node.demo.stack import DEMO_MODEL_DIR, EmbeddedPacs
from node.intake import Intake
from node.jobs import JobError, JobStore
from node.metrics import NodeMetrics
from node.netsettings import sender_settings
from node.pipeline import Delivered, Inferred, Pipeline, SrBuilt, StepStore
from node.pseudonym import Pseudonymizer
from node.runner import JobRunner
from node.sr import read_result_sr
from node.vault import IdentifierVault
from scp import Spool, StorageSender
from tests.support.local_backend import CrashAfterServing, LocalBackend

KEY = b"k" * 32


def _cfg(tmp: Path, pacs_port: int, cxr_match: Any = None, **sender: Any) -> NodeConfig:
    return parse_model(
        {
            "node": {"state_dir": str(tmp / "state")},
            "destinations": {
                "pacs": {"ae_title": "DEMOPACS", "host": "127.0.0.1", "port": pacs_port}
            },
            "sender": {
                "max_attempts": 3,
                "initial_backoff_seconds": 0.01,
                "max_backoff_seconds": 0.02,
                "timeout_seconds": 5,
                **sender,
            },
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
                    "match": cxr_match or {"attribute": "Modality", "equals": "CR"},
                    "action": {
                        "infer": {"vendor": "v", "model": "demo-lesion", "destinations": ["pacs"]}
                    },
                },
                {"name": "rest", "match": {"all": []}, "action": "discard"},
            ],
        },
        NodeConfig,
    )


@pytest.fixture(scope="module")
def backend_factory(tmp_path_factory: pytest.TempPathFactory) -> Any:
    keys = tmp_path_factory.mktemp("ckks")
    shared = LocalBackend(DEMO_MODEL_DIR / "manifest.yaml", keys)

    def make(fail_times: int = 0) -> LocalBackend:
        shared.calls, shared.fail_times = 0, fail_times
        return shared

    return make


def _setup(tmp: Path, cfg: NodeConfig, backend: Any, lesions: list[bool], audit: Any = None) -> Any:
    spool = Spool(tmp / "spool", Pseudonymizer(KEY).study, fsync=False)
    store = JobStore(tmp / "jobs.sqlite")
    intake = Intake(spool, store, tmp / "jobs", tmp / "quarantine")
    study = phantom_cr_study(lesions, seed=5, size=128)
    for ds in study:
        path = tmp / "in.dcm"
        ds.save_as(path, enforce_file_format=True)
        spool.store(str(ds.StudyInstanceUID), str(ds.SOPInstanceUID), path.read_bytes())
    job = intake.claim(spool.study_key(str(study[0].StudyInstanceUID)))
    assert job is not None
    vault = IdentifierVault(tmp / "vault.sqlite", b"v" * 32)
    sender = StorageSender(sender_settings(cfg))
    sends: list[int] = []
    real_send = sender.send

    def counting_send(dest: Any, items: Any) -> Any:
        sends.append(len(items))
        return real_send(dest, items)

    sender.send = counting_send  # type: ignore[method-assign]
    pipeline = Pipeline(
        cfg,
        pseudonyms=Pseudonymizer(KEY),
        deid_keys=DeidKeys(KEY, b"d" * 32),
        vault=vault,
        sender=sender,
        backends=lambda name: backend,
        uid_key=KEY,
        jobs=store,
        audit=audit,
        metrics=NodeMetrics(),
    )
    return study, store, intake, job, pipeline, sends


def test_pacs_down_resumes_at_delivery_without_repeating_inference(
    tmp_path: Path, backend_factory: Any
) -> None:
    backend = backend_factory()
    pacs = EmbeddedPacs(tmp_path / "pacs")  # port chosen, not listening yet: the PACS is down
    cfg = _cfg(tmp_path, pacs.dicom_port)
    study, _store, _intake, job, pipeline, sends = _setup(tmp_path, cfg, backend, [True, False])
    with pytest.raises(Exception):  # noqa: B017 - the sender's error when PACS is down
        pipeline(job)
    steps = job.dir / "steps"
    assert (steps / "r0-inference.json").exists() and (steps / "r0-sr.json").exists()
    assert not (steps / "r0-deliver-pacs.json").exists()
    assert backend.calls == 1
    sr_file = next((job.dir / "work" / "r0" / "sr").glob("*.dcm"))
    sr_uid = pydicom.dcmread(sr_file).SOPInstanceUID
    with pacs:
        pipeline(job)  # resumes: only the delivery is done
        pipeline(job)  # already complete: nothing is sent again
        found = pacs.find_sr(str(study[0].StudyInstanceUID))
    assert backend.calls == 1
    assert sends == [1, 1]  # the failed try, then one successful association; none after
    assert found is not None and found.SOPInstanceUID == sr_uid
    report = read_result_sr(found)
    assert report.findings[0].present is True
    assert set(report.findings[0].source_sop_instance_uids) == {
        str(ds.SOPInstanceUID) for ds in study
    }


def test_vendor_outage_retries_then_fails_then_requeue_completes(
    tmp_path: Path, backend_factory: Any
) -> None:
    backend = backend_factory(fail_times=3)
    with EmbeddedPacs(tmp_path / "pacs") as pacs:
        cfg = _cfg(tmp_path, pacs.dicom_port)
        study, store, intake, job, pipeline, _ = _setup(tmp_path, cfg, backend, [False])
        runner = JobRunner(store, intake, pipeline, sender_settings(cfg))
        for _ in range(3):
            time.sleep(0.05)  # past the backoff
            runner.run_once()
        failed = store.get(job.id)
        assert failed is not None and failed.state == "failed" and failed.attempts == 3
        assert failed.last_error is not None and "ConnectionError" in failed.last_error
        assert failed.dir.is_dir() and "quarantine" in str(failed.dir)
        # the admin requeues it (blindread jobs retry ID) once the vendor is back
        assert intake.retry(job.id) is not None
        done = runner.run_once()
        assert done is not None and done.state == "done"
        assert backend.calls == 4
        assert pacs.find_sr(str(study[0].StudyInstanceUID)) is not None


def test_no_rule_or_discard_sends_nothing(tmp_path: Path, backend_factory: Any) -> None:
    backend = backend_factory()
    cfg = _cfg(tmp_path, 1)
    _study, _store, _intake, job, pipeline, sends = _setup(tmp_path, cfg, backend, [False])
    for path in job.paths:  # make it a CT: the CR rule does not match, 'rest' discards
        ds = pydicom.dcmread(path)
        ds.Modality = "CT"
        ds.save_as(path, enforce_file_format=True)
    pipeline(job)
    assert backend.calls == 0 and sends == []
    assert (job.dir / "steps" / "r1-discarded.json").exists()


@pytest.mark.parametrize(("sender_ae", "fires"), [("CT1", True), ("OTHER", False)])
def test_rules_see_the_calling_ae_our_scp_recorded(
    tmp_path: Path, backend_factory: Any, sender_ae: str, fires: bool
) -> None:
    """The SCP writes the calling AE title into each spooled file's meta information
    (Source Application Entity Title); calling_ae conditions match on it."""
    backend = backend_factory()
    match = {"all": [{"attribute": "Modality", "equals": "CR"}, {"calling_ae": "CT1"}]}
    cfg = _cfg(tmp_path, 1, cxr_match=match)
    _study, _store, _intake, job, pipeline, _sends = _setup(tmp_path, cfg, backend, [False])
    for path in job.paths:
        ds = pydicom.dcmread(path)
        ds.file_meta.SourceApplicationEntityTitle = sender_ae
        ds.save_as(path, enforce_file_format=True)
    if fires:
        with pytest.raises(Exception):  # noqa: B017 - destination port 1: nobody listens
            pipeline(job)
        assert backend.calls == 1
    else:
        pipeline(job)
        assert backend.calls == 0
        assert (job.dir / "steps" / "r1-discarded.json").exists()


def test_late_images_make_a_second_job_whose_sr_covers_the_whole_study(
    tmp_path: Path, backend_factory: Any
) -> None:
    backend = backend_factory()
    with EmbeddedPacs(tmp_path / "pacs") as pacs:
        cfg = _cfg(tmp_path, pacs.dicom_port)
        study, store, intake, job1, pipeline, _ = _setup(tmp_path, cfg, backend, [False, False])
        runner = JobRunner(store, intake, pipeline, sender_settings(cfg))
        done1 = runner.run_once()
        assert done1 is not None and done1.id == job1.id and done1.state == "done"
        first = pacs.find_sr(str(study[0].StudyInstanceUID))
        assert first is not None
        # a late image of the same study arrives after the completion timer fired
        late = phantom_cr_study([True], seed=9, size=128, study_uid=str(study[0].StudyInstanceUID))
        path = tmp_path / "late.dcm"
        late[0].save_as(path, enforce_file_format=True)
        intake.spool.store(str(late[0].StudyInstanceUID), str(late[0].SOPInstanceUID),
                           path.read_bytes())  # fmt: skip
        job2 = intake.claim(intake.spool.study_key(str(study[0].StudyInstanceUID)))
        assert job2 is not None and job2.study == job1.study and len(job2.files) == 1
        done2 = runner.run_once()
        assert done2 is not None and done2.id == job2.id and done2.state == "done"
        srs = [pydicom.dcmread(p) for p in sorted((tmp_path / "pacs").glob("*.dcm"))]
        srs = [d for d in srs if d.Modality == "SR"]
    # an amended result: a new SR (a PACS keeps the first copy of a UID), superseding the first
    [second] = [d for d in srs if d.SOPInstanceUID != first.SOPInstanceUID]
    assert len(srs) == 2
    report = read_result_sr(second)
    refs = set(report.findings[0].source_sop_instance_uids)
    assert refs == {str(ds.SOPInstanceUID) for ds in [*study, *late]}
    assert report.predecessor_uids == (str(first.SOPInstanceUID),) and report.revision == 2
    assert second.SeriesInstanceUID == first.SeriesInstanceUID


def test_step_store_reads_back_the_typed_result_and_names_a_damaged_record(
    tmp_path: Path,
) -> None:
    steps = StepStore(tmp_path / "steps")
    inferred = Inferred(
        probabilities=((0.25, 0.75),), model_version="1.0", parameters={"he.scheme": "CKKS"},
        timings={"encrypt": 0.5}, bytes_up=10, bytes_down=20,
    )  # fmt: skip
    assert steps.get(Inferred, "r0") is None
    assert steps.put(inferred, "r0") is inferred
    assert (tmp_path / "steps" / "r0-inference.json").exists()
    assert steps.get(Inferred, "r0") == inferred  # tuples come back as tuples
    steps.put(Delivered(sent=2), "r0", "pacs")
    assert steps.get(Delivered, "r0", "pacs") == Delivered(sent=2)
    (tmp_path / "steps" / "r0-sr.json").write_text('{"filez": []}')
    with pytest.raises(JobError, match=r"r0-sr\.json"):
        steps.get(SrBuilt, "r0")


def test_crash_after_vendor_served_leaves_one_audited_request_per_served_request(
    tmp_path: Path, backend_factory: Any
) -> None:
    # issue #16 defect 11: the intent is audited before the request goes out, so a crash
    # between the vendor's answer and our record no longer hides a served request
    backend = CrashAfterServing(backend_factory(), crashes=1)
    ledger = AuditLedger.open(tmp_path / "audit.jsonl", tmp_path / "audit.key", fsync=False)
    with EmbeddedPacs(tmp_path / "pacs") as pacs:
        cfg = _cfg(tmp_path, pacs.dicom_port)
        study, _, _, job, pipeline, _ = _setup(tmp_path, cfg, backend, [False], audit=ledger)
        with pytest.raises(ConnectionResetError):
            pipeline(job)
        pipeline(job)  # resumed: inference is sent again
        assert pacs.find_sr(str(study[0].StudyInstanceUID)) is not None
    entries = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    requested = [e for e in entries if e["kind"] == "inference_requested"]
    received = [e for e in entries if e["kind"] == "result_received"]
    assert len(backend.served) == 2
    assert len(requested) == len(backend.served)  # one per request the vendor served
    assert all(e["details"]["images"] == 1 for e in requested)
    # the answer that was recorded names the request the vendor served last, by its hashes
    assert len(received) == 1
    assert received[0]["details"]["ciphertext_hashes"] == backend.served[1].request_sha256
    assert received[0]["details"]["context_hash"] == backend.served[1].context_sha256
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
