"""Values copied from the sources into result objects fit their VR (issue #16, defect 11).

A 10 MB Patient Name used to be copied into the SR as a 10 MB UN element.
"""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from node.config.sr import SrSection
from node.sr import SrError, build_result_objects, build_result_sr, write_dataset_atomic
from node.sr.limits import MAX_LENGTH, within_vr_limits
from tests.node.test_sr_build import KEY, _outputs, assert_valid_dicom
from tests.node.test_sr_synth import make_manifest, make_study

TEN_MB = 10 * 1024 * 1024


def _hostile_study() -> list[Dataset]:
    study = make_study(2, patient_name="Doe^" + "J" * TEN_MB)
    first = study[0]
    first.StudyDescription = "D" * 100_000
    first.PatientComments = "C" * 200_000  # LT: 10240
    first.BodyPartExamined = "CHEST" + " " * 5000  # CS: 16, copied by the summary image
    first.OtherPatientNames = ["Roe^" + "X" * 500, "Other^Name"]  # PN, multi-valued
    return study


def _encoded(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _all_elements(ds: Dataset) -> list[DataElement]:
    out = []
    for elem in ds:
        out.append(elem)
        if elem.VR == "SQ":
            for item in elem.value:
                out.extend(_all_elements(item))
    return out


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_10mb_patient_name_gives_a_small_sr_without_un() -> None:
    study = _hostile_study()
    settings = SrSection(secondary_capture=True)
    sr, sc = build_result_objects(
        make_manifest(), _outputs(study), study, uid_key=KEY, settings=settings
    )
    for obj in (sr, sc):
        data = _encoded(obj)
        assert len(data) < 512 * 1024, len(data)  # the SC's pixels are ~300 KB; SR ~15 KB
        back = pydicom.dcmread(io.BytesIO(data))
        assert [e.keyword or str(e.tag) for e in _all_elements(back) if e.VR == "UN"] == []
        assert back["PatientName"].VR == "PN"
        assert str(back.PatientName) == "Doe^" + "J" * 60  # one component group: 64 characters
    back = pydicom.dcmread(io.BytesIO(_encoded(sr)))
    assert back.StudyDescription == "D" * MAX_LENGTH["LO"]
    assert len(_encoded(sr)) < 64 * 1024
    sc_back = pydicom.dcmread(io.BytesIO(_encoded(sc)))
    assert sc_back.BodyPartExamined == "CHEST"
    # the sources themselves are untouched
    assert len(str(study[0].PatientName)) == 4 + TEN_MB


@pytest.mark.peer
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_sr_and_sc_from_hostile_sources_are_valid(tmp_path: Path) -> None:
    study = _hostile_study()
    objs = build_result_objects(
        make_manifest(),
        _outputs(study),
        study,
        uid_key=KEY,
        settings=SrSection(secondary_capture=True),
    )
    for obj, iod in zip(objs, ("Comprehensive3DSR", "SCImage"), strict=True):
        path = tmp_path / f"{iod}.dcm"
        write_dataset_atomic(obj, path)
        assert path.stat().st_size < 512 * 1024
        assert_valid_dicom(path, iod)


@pytest.mark.parametrize("keyword", ["PatientID", "AccessionNumber", "StudyID"])
def test_oversize_identifier_fails_the_job_without_quoting_it(keyword: str) -> None:
    study = make_study(1)
    secret = "SECRET" + "9" * 100
    setattr(study[0], keyword, secret)
    with pytest.raises(SrError) as info:
        build_result_sr(make_manifest(), _outputs(study), study, uid_key=KEY)
    message = str(info.value)
    assert keyword in message and "never truncated" in message
    assert "SECRET" not in message


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_person_name_groups_are_cut_one_by_one() -> None:
    ds = Dataset()
    ds.PatientName = "A" * 70 + "^B=" + "C" * 100 + "=D"
    ds.OtherPatientNames = ["E" * 65, "F^G"]
    out = within_vr_limits(ds)
    assert str(out.PatientName) == "A" * 64 + "=" + "C" * 64 + "=D"
    assert [str(n) for n in out.OtherPatientNames] == ["E" * 64, "F^G"]
    assert len(str(ds.PatientName)) == 70 + 3 + 100 + 2  # original unchanged


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_un_elements_are_not_copied() -> None:
    ds = make_study(1)[0]
    ds.add(DataElement(0x00111010, "UN", b"X" * 1000))  # unknown tag: stays UN
    # a known tag sent as UN is read as its own VR by pydicom, then limited like any other
    del ds.PatientName
    ds.add(DataElement(0x00100010, "UN", b"Doe^" + b"X" * 1000))
    out = within_vr_limits(ds)
    assert 0x00111010 not in out
    assert out["PatientName"].VR == "PN" and str(out.PatientName) == "Doe^" + "X" * 60
    sr = build_result_sr(make_manifest(), _outputs([ds]), [ds], uid_key=KEY)
    assert [e.tag for e in _all_elements(sr) if e.VR == "UN"] == []


def test_values_that_fit_are_shared_not_copied() -> None:
    ds = make_study(1)[0]
    out = within_vr_limits(ds)
    assert out["PatientName"] is ds["PatientName"]
    assert out["PixelData"] is ds["PixelData"]
