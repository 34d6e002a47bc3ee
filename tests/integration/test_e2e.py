"""End to end: a real Orthanc pushes a study to the node, the node runs encrypted inference with
a vendor peer in another process over mutual TLS, and the SR lands in the same study in Orthanc.

Checked on the way: dciodvfy is clean on the SR as stored in the PACS; the encrypted result
equals onnxruntime on the same preprocessed pixels; the audit chain verifies; no planted
identifier (names, IDs, accession number, birth date, Study/Series/SOP UIDs) appears in any log
line or in any byte sent to the vendor.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from pydicom import dcmwrite
from pydicom.filebase import DicomBytesIO
from pynetdicom import AE

from node.audit import load_public_key, public_key_path, verify_ledger
from node.demo.phantom_study import PlantedIdentity, phantom_cr_study
from node.demo.stack import DEMO_MODEL_DIR, Stack
from node.logsetup import quiet_loggers
from node.sr import read_result_sr
from secure_infer import preprocess_for_manifest
from secure_infer.manifest import load_manifest
from tests.node.test_sr_build import assert_dsrdump_ok, assert_valid_dicom
from tests.support.local_backend import record_vendor_traffic
from tests.support.peers import require_tool

pytestmark = pytest.mark.slow


def _bytes(ds: object) -> bytes:
    buf = DicomBytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)  # type: ignore[arg-type]
    return buf.getvalue()


def test_orthanc_push_to_sr_in_same_study(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_tool("Orthanc")
    quiet_loggers()
    caplog.set_level(logging.DEBUG, logger="node")
    caplog.set_level(logging.DEBUG, logger="scp")
    caplog.set_level(logging.DEBUG, logger="secure_infer")

    sent_to_vendor = record_vendor_traffic(monkeypatch)

    who = PlantedIdentity()
    study = phantom_cr_study([False, True, False], seed=7, identity=who)
    study_uid = str(study[0].StudyInstanceUID)
    needles = [
        *who.needles(),
        study_uid.encode(),
        str(study[0].SeriesInstanceUID).encode(),
        *[str(ds.SOPInstanceUID).encode() for ds in study],
    ]

    with Stack(tmp_path, quiet_seconds=4.0, pacs="orthanc", metrics=True) as stack:
        pacs = stack.pacs
        assert pacs is not None and hasattr(pacs, "upload")
        for ds in study:
            pacs.upload(_bytes(ds))
        orthanc_study = pacs.post(
            "/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": study_uid}}
        )
        assert len(orthanc_study) == 1
        # Orthanc, as the PACS, pushes the study to the node (C-STORE from a peer we did not write)
        pacs.post("/modalities/blindread/store", {"Resources": orthanc_study, "Synchronous": True})
        sr = stack.wait_for_sr(study_uid, timeout=180)
        assert stack.node is not None and stack.cfg is not None
        ledger = stack.cfg.audit_ledger

        # the SR is in the original study, listed by Orthanc with the original images
        instances = pacs.instances_of_study(study_uid)
        assert len(instances) == len(study) + 1
        sr_path = tmp_path / "sr.dcm"
        sr.save_as(sr_path)

        # an association to the wrong called AE is refused and counted
        ae = AE(ae_title="INTRUDER")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", stack.node_port, ae_title="NOT-US")
        assert assoc.is_rejected
        # the node's Prometheus endpoint saw the whole path; no identifier in any label
        server = stack.node.metrics_server
        assert server is not None
        deadline = time.monotonic() + 15  # the runner marks the job done just after delivery
        while True:
            with urllib.request.urlopen(server.url + "/metrics", timeout=10) as resp:
                scrape = resp.read()
            if b'blindread_jobs{state="done"} 1.0' in scrape or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        with urllib.request.urlopen(server.url + "/healthz", timeout=10) as resp:
            assert json.loads(resp.read())["status"] == "ok"

    report = read_result_sr(sr)
    assert report.study_instance_uid == study_uid
    (finding,) = report.findings
    assert set(finding.source_sop_instance_uids) == {str(ds.SOPInstanceUID) for ds in study}

    # the decrypted probability equals onnxruntime on the same preprocessed pixels
    manifest = load_manifest(DEMO_MODEL_DIR / "manifest.yaml")
    x = np.stack(
        [
            preprocess_for_manifest(
                ds.pixel_array, manifest,
                rescale_slope=float(ds.RescaleSlope),
                rescale_intercept=float(ds.RescaleIntercept),
                photometric=ds.PhotometricInterpretation,
            )
            for ds in study
        ]
    )  # fmt: skip
    sess = ort.InferenceSession(str(DEMO_MODEL_DIR / "model.onnx"))
    expected = sess.run(None, {"image": x.astype(np.float32)})[0][:, 0]
    assert finding.probability == pytest.approx(float(expected.max()), abs=1e-3)
    assert finding.present == bool(expected.max() >= manifest.outputs[0].threshold)

    values = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in scrape.decode().splitlines()
        if line and not line.startswith("#")
    }
    assert values["blindread_instances_received_total"] == len(study)
    assert values["blindread_studies_completed_total"] == 1
    assert values['blindread_associations_rejected_total{reason="called_ae"}'] == 1
    assert values['blindread_sr_deliveries_total{outcome="success"}'] == 1
    assert values['blindread_jobs{state="done"}'] == 1
    assert values['blindread_vendor_bytes_total{direction="sent"}'] > 0
    for needle in needles:
        assert needle not in scrape

    # valid DICOM, readable by dcmtk
    assert_valid_dicom(sr_path, "Comprehensive3DSR")
    assert_dsrdump_ok(sr_path)

    # tamper-evident audit chain verifies and saw the whole path
    result = verify_ledger(ledger, load_public_key(public_key_path(ledger)))
    assert result.ok, result.describe()
    kinds = [line for line in ledger.read_text().splitlines()]
    for kind in ("study_received", "rule_matched", "deidentified", "inference_requested",
                 "result_received", "sr_delivered"):  # fmt: skip
        assert any(f'"kind":"{kind}"' in line for line in kinds), kind

    # both sides' chains cross-check: every ciphertext hash we audited is in the vendor's chain
    vendor_chain = [
        json.loads(line)
        for line in (tmp_path / "vendor" / "state" / "chain.jsonl").read_text().splitlines()
    ]
    # (inference_requested is the intent, written before sending; the hashes of what was sent
    # are known after encryption and are in result_received, issue #16 defect 11)
    requested = [json.loads(line) for line in kinds if '"kind":"inference_requested"' in line]
    ours = [json.loads(line) for line in kinds if '"kind":"result_received"' in line]
    audited = {h for entry in ours for h in entry["details"]["ciphertext_hashes"]}
    assert audited and audited <= {e["request_sha256"] for e in vendor_chain}
    # and no request is missing from our side: one audited intent per answered inference
    assert len(requested) == len(ours)
    assert sum(len(e["details"]["ciphertext_hashes"]) for e in ours) == len(vendor_chain)

    # no PHI in logs (ours and the vendor's) nor in anything sent to the vendor
    logs = "\n".join(r.getMessage() for r in caplog.records).encode()
    vendor_log = (tmp_path / "vendor" / "vendor.log").read_bytes()
    ledger_bytes = ledger.read_bytes()
    assert sent_to_vendor, "nothing was sent to the vendor?"
    for needle in needles:
        assert needle not in logs, needle
        assert needle not in vendor_log, needle
        assert needle not in ledger_bytes, needle
        for blob in sent_to_vendor:
            assert needle not in blob, needle
