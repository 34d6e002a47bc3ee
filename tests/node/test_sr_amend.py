"""An SR amended for late images (issue #16): a new document superseding the earlier one.

New SOP Instance UID in the same series, Instance Number = revision, every earlier revision in
Predecessor Documents Sequence (PS3.3 C.17.2), valid for dciodvfy and dsrdump; the summary image
follows the same rule; a rebuild from the same inputs is the same document.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from node.config.sr import SrSection
from node.sr import build_result_objects, read_result_sr, write_dataset_atomic
from tests.node.test_sr_build import KEY, _outputs, assert_dsrdump_ok, assert_valid_dicom
from tests.node.test_sr_synth import make_manifest, make_study

SC = SrSection(secondary_capture=True)


@pytest.mark.peer
def test_amended_sr_supersedes_the_earlier_one_and_validates(tmp_path: Path) -> None:
    manifest = make_manifest()
    study = make_study(3)
    first = study[:2]
    sr1, sc1 = build_result_objects(manifest, _outputs(first), first, uid_key=KEY, settings=SC)
    assert int(sr1.InstanceNumber) == 1 and "PredecessorDocumentsSequence" not in sr1

    # a resend of the first result (same images, other order): the same document
    again = build_result_objects(
        manifest, _outputs(first), first[::-1], uid_key=KEY, settings=SC, earlier_results=[sr1, sc1]
    )
    assert [d.SOPInstanceUID for d in again] == [sr1.SOPInstanceUID, sc1.SOPInstanceUID]
    assert "PredecessorDocumentsSequence" not in again[0]

    # late images: the amended result covers every image and supersedes the first
    sr2, sc2 = build_result_objects(
        manifest, _outputs(study), study, uid_key=KEY, settings=SC, earlier_results=[sr1, sc1]
    )
    assert sr2.SOPInstanceUID != sr1.SOPInstanceUID and sc2.SOPInstanceUID != sc1.SOPInstanceUID
    assert sr2.SeriesInstanceUID == sr1.SeriesInstanceUID
    assert sc2.SeriesInstanceUID == sc1.SeriesInstanceUID
    assert int(sr2.InstanceNumber) == 2 and int(sc2.InstanceNumber) == 2
    report = read_result_sr(sr2)
    assert report.revision == 2 and report.predecessor_uids == (sr1.SOPInstanceUID,)
    [item] = sr2.PredecessorDocumentsSequence
    assert item.StudyInstanceUID == sr1.StudyInstanceUID
    [series] = item.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == sr1.SeriesInstanceUID
    [ref] = series.ReferencedSOPSequence
    assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (
        sr1.SOPClassUID,
        sr1.SOPInstanceUID,
    )
    assert "Revision 2" in sr2.CompletionFlagDescription
    assert {u for f in report.findings for u in f.source_sop_instance_uids} == {
        d.SOPInstanceUID for d in study
    }
    # tracking UIDs follow a finding across revisions
    tracking = read_result_sr(sr1).study_findings[0].tracking_uid
    assert tracking == report.study_findings[0].tracking_uid

    for name, ds, iod in (("sr2.dcm", sr2, "Comprehensive3DSR"), ("sc2.dcm", sc2, "SCImage")):
        write_dataset_atomic(ds, tmp_path / name)
        assert_valid_dicom(tmp_path / name, iod)
    assert_dsrdump_ok(tmp_path / "sr2.dcm")

    # a third revision names both earlier ones; rebuilding it gives the same document
    more = make_study(1)
    for ds in more:
        ds.StudyInstanceUID, ds.PatientID = sr1.StudyInstanceUID, study[0].PatientID
    everything = [*study, *more]
    sr3 = build_result_objects(
        manifest, _outputs(everything), everything, uid_key=KEY, earlier_results=[sr1, sr2]
    )[0]
    assert read_result_sr(sr3).predecessor_uids == (sr1.SOPInstanceUID, sr2.SOPInstanceUID)
    rebuilt = build_result_objects(
        manifest, _outputs(everything), everything, uid_key=KEY, earlier_results=[sr1, sr2, sr3]
    )[0]
    assert rebuilt.SOPInstanceUID == sr3.SOPInstanceUID and int(rebuilt.InstanceNumber) == 3
    assert read_result_sr(rebuilt).predecessor_uids == read_result_sr(sr3).predecessor_uids
    assert pydicom.dcmread(tmp_path / "sr2.dcm").SOPInstanceUID == sr2.SOPInstanceUID
