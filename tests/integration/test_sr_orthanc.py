"""Result SR and summary image stored into a real Orthanc land under the ORIGINAL study.

The original images, the SR and the SC are sent with dcmtk ``storescu`` (a real Storage SCU) and
found back through Orthanc's REST API; a resend of a rebuilt SR must not add an instance.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from node.config.sr import SrSection
from node.sr import as_outputs, build_result_sr, build_summary_sc, write_dataset_atomic
from tests.node.test_sr_synth import make_manifest, make_study, write_study
from tests.support.peers import Orthanc, peer_env, require_tool

pytestmark = pytest.mark.peer

KEY = b"orthanc-test-uid-key-0123456789ab"


def _storescu(pacs: Orthanc, files: list[Path]) -> None:
    exe = require_tool("storescu")
    proc = subprocess.run(
        [exe, "--required", "-aet", "BLINDREAD", "-aec", pacs.aet, pacs.host,
         str(pacs.dicom_port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
        env=peer_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_sr_and_summary_are_listed_under_the_original_study(
    orthanc: Orthanc, tmp_path: Path
) -> None:
    study = make_study(3, n_series=2)
    originals = write_study(study, tmp_path / "originals")
    _storescu(orthanc, originals)

    manifest = make_manifest()
    outputs = as_outputs(
        {"pneumothorax": 0.91, "cardiomegaly": 0.05},
        {d.SOPInstanceUID: {"nodule": 0.2 + 0.3 * i} for i, d in enumerate(study)},
    )
    section = SrSection(series_number=9901, secondary_capture=True)
    sr = build_result_sr(manifest, outputs, study, uid_key=KEY, settings=section)
    sc = build_summary_sc(manifest, outputs, study, uid_key=KEY, settings=section)
    write_dataset_atomic(sr, tmp_path / "sr.dcm")
    write_dataset_atomic(sc, tmp_path / "sc.dcm")
    _storescu(orthanc, [tmp_path / "sr.dcm", tmp_path / "sc.dcm"])

    study_uid = study[0].StudyInstanceUID
    [orthanc_study] = orthanc.post(
        "/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": study_uid}}
    )
    instances = orthanc.instances_of_study(study_uid)
    sop_uids = {i["MainDicomTags"]["SOPInstanceUID"] for i in instances}
    assert sop_uids == {d.SOPInstanceUID for d in study} | {sr.SOPInstanceUID, sc.SOPInstanceUID}

    series = orthanc.get(f"/studies/{orthanc_study}/series")
    by_uid = {s["MainDicomTags"]["SeriesInstanceUID"]: s["MainDicomTags"] for s in series}
    assert by_uid[sr.SeriesInstanceUID]["Modality"] == "SR"
    assert by_uid[sr.SeriesInstanceUID]["SeriesNumber"] == "9901"
    assert by_uid[sr.SeriesInstanceUID]["SeriesDescription"] == section.series_description
    assert by_uid[sc.SeriesInstanceUID]["Modality"] == "OT"
    # one patient in Orthanc: the SR did not create a second patient or study
    assert len(orthanc.get("/patients")) == 1
    assert len(orthanc.get("/studies")) == 1

    # a resend (e.g. job resumed after a crash) of a rebuilt SR replaces, never duplicates
    again = build_result_sr(manifest, outputs, list(reversed(study)), uid_key=KEY, settings=section)
    assert again.SOPInstanceUID == sr.SOPInstanceUID
    write_dataset_atomic(again, tmp_path / "sr2.dcm")
    _storescu(orthanc, [tmp_path / "sr2.dcm"])
    assert len(orthanc.instances_of_study(study_uid)) == len(study) + 2

    # what Orthanc stored is our SR: read its tags back through REST
    [sr_instance] = [
        i for i in instances if i["MainDicomTags"]["SOPInstanceUID"] == sr.SOPInstanceUID
    ]
    tags = orthanc.get(f"/instances/{sr_instance['ID']}/simplified-tags")
    assert tags["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.88.34"
    assert tags["PatientID"] == study[0].PatientID
    assert tags["ConceptNameCodeSequence"][0]["CodeMeaning"] == "Imaging Measurement Report"
