"""Result SR: content, validity (dciodvfy, dsrdump), read-back with highdicom, UIDs, errors."""

from __future__ import annotations

import math
import re
import subprocess
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.sr.codedict import codes
from pydicom.uid import UID

from node import __version__
from node.config import ConfigError, parse_model
from node.config.sr import SrSection
from node.sr import (
    ResultOutputs,
    SrError,
    as_outputs,
    build_result_objects,
    build_result_sr,
    build_summary_sc,
    device_uid,
    read_result_sr,
    write_dataset_atomic,
)
from node.sr import concepts as c
from node.sr.summary import summary_lines
from tests.node.test_sr_synth import dciodvfy, make_manifest, make_study
from tests.support.peers import require_tool

KEY = b"k" * 32
CKKS = {"he.scheme": "CKKS", "he.poly_modulus_degree": 16384, "he.scale_bits": 40}

# dciodvfy warnings we accept, with why. Empty today: the SR and the SC validate without any
# warning; a new warning must be justified here before it can pass.
DCIODVFY_WARNING_ALLOW_LIST: dict[str, str] = {}


def _allowed(warning: str) -> bool:
    return any(re.search(pattern, warning) for pattern in DCIODVFY_WARNING_ALLOW_LIST)


def test_warning_allow_list_only_lets_justified_warnings_through() -> None:
    assert all(reason.strip() for reason in DCIODVFY_WARNING_ALLOW_LIST.values())
    assert not _allowed("Warning - some new problem nobody justified")


def assert_valid_dicom(path: Path, iod: str) -> None:
    """dciodvfy: zero errors, only allow-listed warnings, and it recognised the IOD."""
    errors, warnings = dciodvfy(path)
    assert errors == [], errors
    assert [w for w in warnings if not _allowed(w)] == []
    exe = require_tool("dciodvfy")
    out = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    assert iod in (out.stdout + out.stderr).splitlines()


def assert_dsrdump_ok(path: Path) -> str:
    exe = require_tool("dsrdump")
    proc = subprocess.run(
        [exe, "-v", "+Pl", "+Pu", "+Pt", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    bad = [ln for ln in proc.stderr.splitlines() if ln.startswith(("E:", "F:", "W:"))]
    assert bad == []
    return proc.stdout


def _outputs(study: list[pydicom.Dataset], pn: float = 0.83, cm: float = 0.12) -> ResultOutputs:
    return as_outputs(
        {"pneumothorax": pn, "cardiomegaly": cm},
        {d.SOPInstanceUID: {"nodule": round(0.25 * i + 0.1, 3)} for i, d in enumerate(study)},
    )


@pytest.mark.peer
@pytest.mark.parametrize(
    ("modality", "n_images", "image_level", "nfpd"),
    [("CR", 3, True, True), ("DX", 2, False, False), ("CR", 1, True, False)],
)
def test_sr_is_valid_and_reads_back_with_highdicom(
    tmp_path: Path, modality: str, n_images: int, image_level: bool, nfpd: bool
) -> None:
    study = make_study(n_images, n_series=min(2, n_images), modality=modality)
    manifest = make_manifest(image_level=image_level, not_for_primary_diagnosis=nfpd)
    images = (
        {d.SOPInstanceUID: {"nodule": 0.9 - 0.3 * i} for i, d in enumerate(study)}
        if image_level
        else {}
    )
    outputs = as_outputs({"pneumothorax": 0.83, "cardiomegaly": 0.12}, images)
    sr = build_result_sr(manifest, outputs, study, uid_key=KEY, algorithm_parameters=CKKS)
    path = tmp_path / "sr.dcm"
    write_dataset_atomic(sr, path)
    assert_valid_dicom(path, "Comprehensive3DSR")
    dump = assert_dsrdump_ok(path)
    assert "Imaging Measurement Report" in dump
    assert "TID 1500" in dump or "1500" in dump

    # highdicom, independently of our reader
    doc = hd.sr.srread(path)
    assert isinstance(doc, hd.sr.Comprehensive3DSR)
    all_uids = {d.SOPInstanceUID for d in study}
    expected = [("pneumothorax", "36118008", 0.83, True), ("cardiomegaly", "8186001", 0.12, False)]
    for _name, code, prob, present in expected:
        [group] = doc.content.get_image_measurement_groups(
            finding_type=hd.sr.CodedConcept(code, "SCT", "x")
        )
        [m] = group.get_measurements(name=c.PROBABILITY)
        assert m.value == pytest.approx(prob)
        assert m.unit == c.UNIT_ONE
        evals = [q for q in group.get_qualitative_evaluations() if q.name.value == code]
        assert [q.value for q in evals] == [c.PRESENT if present else c.ABSENT]
        assert {str(s.referenced_sop_instance_uid) for s in group.source_images} == all_uids
    nodule = hd.sr.CodedConcept("27925004", "SCT", "Nodule")
    groups = doc.content.get_image_measurement_groups(finding_type=nodule)
    assert len(groups) == (n_images if image_level else 0)
    for group in groups:
        [src] = group.source_images
        i = [d.SOPInstanceUID for d in study].index(src.referenced_sop_instance_uid)
        [m] = group.get_measurements(name=c.PROBABILITY)
        assert m.value == pytest.approx(images[study[i].SOPInstanceUID]["nodule"])
    [observer] = doc.content.get_observer_contexts(observer_type=codes.DCM.Device)
    attrs = observer.observer_identifying_attributes
    assert isinstance(attrs, hd.sr.DeviceObserverIdentifyingAttributes)
    assert attrs.uid == device_uid("Example AI Vendor", "ChestNet Demo", "cxr-demo", "2.1.0")
    assert attrs.manufacturer_name == "Example AI Vendor"
    assert attrs.model_name == "ChestNet Demo"

    # our reader: every finding, probability, reference and statement
    report = read_result_sr(pydicom.dcmread(path))
    assert len(report.study_findings) == 2
    assert len(report.image_findings) == (n_images if image_level else 0)
    for f in report.findings:
        assert f.algorithm_name == "cxr-demo"
        assert f.algorithm_version == "2.1.0"
        assert f.algorithm_parameters["he.scheme"] == "CKKS"
        assert f.algorithm_parameters["he.poly_modulus_degree"] == "16384"
        assert f.computed_under_encryption
        assert f.not_for_primary_diagnosis is nfpd
        assert f.present == (f.probability is not None and f.probability >= (f.threshold or 0))
    by_label = {f.label: f for f in report.study_findings}
    assert by_label["pneumothorax"].probability == pytest.approx(0.83)
    assert by_label["pneumothorax"].present is True
    assert by_label["cardiomegaly"].present is False
    assert set(by_label["cardiomegaly"].source_sop_instance_uids) == all_uids


def test_sr_lives_in_the_original_study_with_our_series_and_equipment() -> None:
    study = make_study(2, patient_name="Müller^Jörg", patient_id="PID-77", accession="A-9")
    section = SrSection(series_number=4242, series_description="AI results", institution_name="H")
    sr = build_result_sr(make_manifest(), _outputs(study), study, uid_key=KEY, settings=section)
    orig = study[0]
    for kw in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "StudyID",
        "AccessionNumber",
        "ReferringPhysicianName",
        "SpecificCharacterSet",
    ):
        assert sr[kw].value == orig[kw].value, kw
    assert sr.Modality == "SR"
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"
    assert sr.SeriesNumber == 4242
    assert sr.SeriesDescription == "AI results"
    assert sr.InstitutionName == "H"
    assert sr.SeriesInstanceUID not in {d.SeriesInstanceUID for d in study}
    assert sr.CompletionFlag == "COMPLETE"
    assert sr.VerificationFlag == "UNVERIFIED"
    equipment = {
        (e.Manufacturer, str(e.get("SoftwareVersions", ""))): e
        for e in sr.ContributingEquipmentSequence
    }
    ours = equipment[("BlindRead", __version__)]
    assert "CKKS" in ours.ContributionDescription
    assert ours.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"  # Processing Equipment
    evidence = {
        ref.ReferencedSOPInstanceUID
        for item in sr.CurrentRequestedProcedureEvidenceSequence
        for series in item.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    assert evidence == {d.SOPInstanceUID for d in study}


def test_uids_are_deterministic_keyed_and_distinct() -> None:
    study = make_study(2)
    manifest = make_manifest()
    a = build_result_sr(manifest, _outputs(study), study, uid_key=KEY)
    # same study + model version, different probabilities and file order: same SR identity
    b = build_result_sr(
        manifest,
        _outputs(study, pn=0.1),
        list(reversed(study)),
        uid_key=KEY,
    )
    assert (a.SOPInstanceUID, a.SeriesInstanceUID) == (b.SOPInstanceUID, b.SeriesInstanceUID)
    ta = [f.tracking_uid for f in read_result_sr(a).findings]
    tb = [f.tracking_uid for f in read_result_sr(b).findings]
    assert ta == tb
    assert len(set(ta)) == len(ta)
    other_key = build_result_sr(manifest, _outputs(study), study, uid_key=b"x" * 32)
    assert other_key.SOPInstanceUID != a.SOPInstanceUID
    newer = manifest.model_copy(update={"version": "2.2.0"})
    c2 = build_result_sr(newer, _outputs(study), study, uid_key=KEY)
    assert c2.SOPInstanceUID != a.SOPInstanceUID
    other_study = make_study(2)
    d = build_result_sr(manifest, _outputs(other_study), other_study, uid_key=KEY)
    assert d.SOPInstanceUID != a.SOPInstanceUID
    sc = build_summary_sc(manifest, _outputs(study), study, uid_key=KEY)
    uids = [a.SOPInstanceUID, a.SeriesInstanceUID, sc.SOPInstanceUID, sc.SeriesInstanceUID]
    assert len(set(uids)) == 4
    for uid in uids:
        assert UID(uid).is_valid and len(uid) <= 64 and uid.startswith("2.25.")
    # the device UID names the public model version, identical whatever the hospital key
    dev_a = read_result_sr(a).device_uid
    assert dev_a == read_result_sr(other_key).device_uid
    assert dev_a != read_result_sr(c2).device_uid


def test_threshold_boundary_and_ckks_noise_clipping() -> None:
    study = make_study(1)
    manifest = make_manifest(image_level=False)
    outputs = as_outputs({"pneumothorax": 0.5, "cardiomegaly": 0.3 - 1e-6})
    report = read_result_sr(build_result_sr(manifest, outputs, study, uid_key=KEY))
    by = {f.label: f for f in report.findings}
    assert by["pneumothorax"].present is True  # at the threshold counts as present
    assert by["cardiomegaly"].present is False
    noisy = as_outputs({"pneumothorax": 1.0004, "cardiomegaly": -0.0003})
    report = read_result_sr(build_result_sr(manifest, noisy, study, uid_key=KEY))
    by = {f.label: f for f in report.findings}
    assert by["pneumothorax"].probability == 1.0
    assert by["cardiomegaly"].probability == 0.0


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=3, max_size=3),
)
def test_probabilities_round_trip(probs: list[float]) -> None:
    study = make_study(1, seed=1)
    manifest = make_manifest()
    outputs = as_outputs(
        {"pneumothorax": probs[0], "cardiomegaly": probs[1]},
        {study[0].SOPInstanceUID: {"nodule": probs[2]}},
    )
    report = read_result_sr(build_result_sr(manifest, outputs, study, uid_key=KEY))
    got = {f.label: f for f in report.findings}
    thresholds = {o.name: o.threshold for o in manifest.outputs}
    for label, p in zip(("pneumothorax", "cardiomegaly", "nodule"), probs, strict=True):
        assert got[label].probability == pytest.approx(p, abs=1e-6)
        assert got[label].present is (round(p, 6) >= thresholds[label])


def _problems(exc: pytest.ExceptionInfo[SrError]) -> str:
    return "\n".join(exc.value.problems)


def test_bad_outputs_are_refused_with_every_problem_and_no_uid() -> None:
    study = make_study(2)
    stranger = make_study(1)[0]
    manifest = make_manifest()
    outputs = as_outputs(
        {"pneumothorax": math.nan, "nodule": 0.2, "tumour": 0.1},
        {
            study[0].SOPInstanceUID: {"nodule": 1.5},
            stranger.SOPInstanceUID: {"nodule": 0.2},
            study[1].SOPInstanceUID: {},
        },
    )
    with pytest.raises(SrError) as exc:
        build_result_sr(manifest, outputs, study, uid_key=KEY)
    text = _problems(exc)
    assert "study: missing study-level output 'cardiomegaly'" in text
    assert "study.pneumothorax: probability is not a finite number" in text
    assert "study.nodule: label has level 'image'" in text
    assert "study.tumour: not an output label" in text
    assert "images[0].nodule: probability 1.5 is outside [0, 1]" in text
    assert "images[1]: SOP Instance UID is not among the source images" in text
    assert "images[2]: missing image-level output 'nodule'" in text
    for d in [*study, stranger]:
        assert d.SOPInstanceUID not in text
        assert str(d.PatientName) not in text


def test_bad_sources_are_refused() -> None:
    manifest = make_manifest(image_level=False)
    outputs = as_outputs({"pneumothorax": 0.1, "cardiomegaly": 0.2})
    with pytest.raises(SrError, match="no source image"):
        build_result_sr(manifest, outputs, [], uid_key=KEY)
    mixed = make_study(1) + make_study(1)
    with pytest.raises(SrError, match="more than one study"):
        build_result_sr(manifest, outputs, mixed, uid_key=KEY)
    broken = make_study(1)
    del broken[0].SeriesInstanceUID
    with pytest.raises(SrError, match=r"source_datasets\[0\]: missing SeriesInstanceUID"):
        build_result_sr(manifest, outputs, broken, uid_key=KEY)
    with pytest.raises(SrError, match="uid_key"):
        build_result_sr(manifest, outputs, make_study(1), uid_key=b"short")
    earlier = build_result_sr(manifest, outputs, make_study(1), uid_key=KEY)
    with pytest.raises(SrError, match=r"source_datasets\[1\]: not an image"):
        build_result_sr(manifest, outputs, [make_study(1)[0], earlier], uid_key=KEY)
    two_patients = make_study(2)
    two_patients[1].PatientID = "OTHER"
    with pytest.raises(SrError, match="more than one Patient ID"):
        build_result_sr(manifest, outputs, two_patients, uid_key=KEY)


@pytest.mark.peer
def test_summary_secondary_capture_is_valid_and_phi_free(tmp_path: Path) -> None:
    study = make_study(3, n_series=2, patient_name="Secret^Name", patient_id="PID-SECRET")
    manifest = make_manifest()
    outputs = _outputs(study)
    sc = build_summary_sc(manifest, outputs, study, uid_key=KEY)
    path = tmp_path / "sc.dcm"
    write_dataset_atomic(sc, path)
    assert_valid_dicom(path, "SCImage")
    back = pydicom.dcmread(path)
    assert back.StudyInstanceUID == study[0].StudyInstanceUID
    assert back.PatientID == study[0].PatientID
    assert back.SeriesNumber == SrSection().sc_series_number
    assert back.BurnedInAnnotation == "NO"
    pixels = back.pixel_array
    assert pixels.shape[1] == 1024 and pixels.max() == 255 and (pixels > 0).mean() < 0.2
    lines = "\n".join(summary_lines(manifest, outputs, study))
    assert "Pneumothorax: PRESENT" in lines and "Cardiomegaly: absent" in lines
    assert "NOT FOR PRIMARY DIAGNOSIS" in lines
    for d in study:
        for secret in (d.SOPInstanceUID, d.StudyInstanceUID, "Secret", "PID-SECRET", "ACC-42"):
            assert secret not in lines


def test_sr_settings_are_validated_with_yaml_paths() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_model({"series_description": "x" * 65, "series_number": 0}, SrSection)
    text = "\n".join(exc.value.problems)
    assert "series_description" in text and "series_number: must be >= 1" in text
    with pytest.raises(ConfigError, match="sc_series_number must differ"):
        parse_model({"secondary_capture": True, "sc_series_number": 9901}, SrSection)
    with pytest.raises(ConfigError, match="series_description"):
        parse_model({"series_description": "a\\b"}, SrSection)


def test_write_is_atomic_and_replaces(tmp_path: Path) -> None:
    study = make_study(1)
    manifest = make_manifest(image_level=False)
    path = tmp_path / "out" / "sr.dcm"
    for p in (0.2, 0.9):
        sr = build_result_sr(
            manifest, as_outputs({"pneumothorax": p, "cardiomegaly": 0.1}), study, uid_key=KEY
        )
        write_dataset_atomic(sr, path)
    assert [x.name for x in path.parent.iterdir()] == ["sr.dcm"]  # no temp file left
    [f] = [f for f in read_result_sr(pydicom.dcmread(path)).findings if f.label == "pneumothorax"]
    assert f.probability == pytest.approx(0.9)


def test_reader_refuses_non_sr() -> None:
    with pytest.raises(SrError, match="not a Comprehensive 3D SR"):
        read_result_sr(make_study(1)[0])


def test_result_objects_follow_the_secondary_capture_setting() -> None:
    study = make_study(2)
    manifest = make_manifest()
    only_sr = build_result_objects(manifest, _outputs(study), study, uid_key=KEY)
    assert [d.Modality for d in only_sr] == ["SR"]
    both = build_result_objects(
        manifest, _outputs(study), study, uid_key=KEY, settings=SrSection(secondary_capture=True)
    )
    assert [d.Modality for d in both] == ["SR", "OT"]
    assert both[0].SOPInstanceUID == only_sr[0].SOPInstanceUID
    assert len({d.StudyInstanceUID for d in [*both, *study]}) == 1


def test_manifest_values_dicom_cannot_encode_are_named() -> None:
    manifest = make_manifest(image_level=False)
    long_meaning = manifest.outputs[1].finding.model_copy(update={"meaning": "m" * 70})
    outputs_ = (
        manifest.outputs[0],
        manifest.outputs[1].model_copy(update={"finding": long_meaning}),
    )
    bad = manifest.model_copy(update={"outputs": outputs_})
    with pytest.raises(SrError, match=r"manifest outputs\.cardiomegaly: Code meaning"):
        build_result_sr(
            bad, as_outputs({"pneumothorax": 0.1, "cardiomegaly": 0.2}), make_study(1), uid_key=KEY
        )


@pytest.mark.peer
def test_originals_missing_type2_patient_study_attributes_still_make_valid_objects(
    tmp_path: Path,
) -> None:
    study = make_study(2)
    for ds in study:
        for kw in ("PatientBirthDate", "PatientSex", "AccessionNumber", "ReferringPhysicianName"):
            delattr(ds, kw)
    manifest = make_manifest()
    sr = build_result_sr(manifest, _outputs(study), study, uid_key=KEY)
    sc = build_summary_sc(manifest, _outputs(study), study, uid_key=KEY)
    assert "PatientSex" not in study[0]  # the originals are not modified
    for ds, iod in ((sr, "Comprehensive3DSR"), (sc, "SCImage")):
        path = tmp_path / f"{iod}.dcm"
        write_dataset_atomic(ds, path)
        assert_valid_dicom(path, iod)
        assert ds.PatientSex == "" and ds.AccessionNumber == ""
        assert ds.PatientID == study[0].PatientID


def test_images_are_numbered_as_a_reader_counts_them() -> None:
    study = make_study(4, n_series=2)
    for i, ds in enumerate(study):
        ds.SeriesNumber = 2 if i % 2 == 0 else 1
        ds.InstanceNumber = 10 - i
    del study[3].InstanceNumber  # Type 2 in some IODs: absent sorts as 0
    manifest = make_manifest()
    report = read_result_sr(build_result_sr(manifest, _outputs(study), study, uid_key=KEY))
    order = [f.source_sop_instance_uids[0] for f in report.image_findings]
    expected = sorted(study, key=lambda d: (int(d.SeriesNumber), int(d.get("InstanceNumber", 0))))
    assert order == [d.SOPInstanceUID for d in expected]
    assert [f.tracking_identifier for f in report.image_findings] == [
        f"nodule (image {n})" for n in range(1, 5)
    ]

