"""``blindread rules test``: a dry run on real DICOM files that prints no PHI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from node.cli import main
from tests.node.test_rules import vendor_peer

ROOT = Path(__file__).resolve().parents[2]
PHI = ("Roe^Richard", "Roe", "Richard", "PID-4242", "ACC-990011", "19700101", "St Elsewhere")


def write_dicom(path: Path, modality: str, view: str, image_type: list[str],
                study_uid: str | None = None) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = PHI[0]
    ds.PatientID = PHI[3]
    ds.AccessionNumber = PHI[4]
    ds.PatientBirthDate = PHI[5]
    ds.InstitutionName = PHI[6]
    ds.Modality = modality
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view
    ds.ImageType = image_type
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def study(tmp_path: Path) -> Path:
    d = tmp_path / "study"
    cxr = generate_uid()  # frontal and lateral: two series of one chest study
    write_dicom(d / "s1" / "frontal.dcm", "DX", "PA", ["ORIGINAL", "PRIMARY"], cxr)
    write_dicom(d / "s2" / "lateral.dcm", "DX", "LL", ["ORIGINAL", "PRIMARY"], cxr)
    write_dicom(d / "s3" / "ct.dcm", "CT", "", ["DERIVED", "SECONDARY"])
    return d


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    data = {
        "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 104}},
        "vendors": {"acme": vendor_peer("https://127.0.0.1:1", ["cxr-v2"])},
        "routes": [
            {"name": "vip-skip", "match": {"attribute": "PatientID", "equals": "PID-0000"},
             "action": "discard"},
            {"name": "cxr", "match": {"all": [
                {"attribute": "Modality", "in": ["CR", "DX"]},
                {"attribute": "PatientName", "regex": "^Roe"},
                {"calling_ae": "MODALITY1"}]},
             "action": {"infer": {"model": "cxr-v2", "vendor": "acme", "destinations": ["pacs"],
                                  "series_filter": {"attribute": "ViewPosition",
                                                    "in": ["PA", "AP"]}}}},
        ],
    }
    p = tmp_path / "node.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_dry_run_on_directory(study: Path, cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["rules", "test", "--config", str(cfg), "--calling-ae", "MODALITY1",
                 "--at", "10:00", str(study)])
    out = capsys.readouterr().out
    assert code == 0
    # per study (issue #14): the chest study's two series are one study, evaluated once
    _, chest, ct = re.split(r"^study ", out, flags=re.MULTILINE)
    assert chest.startswith(f"1 of 2: 2 file(s) in 2 series (rules evaluated on {study}/s1/")
    assert chest.count("rule 'cxr' (routes[1]): MATCH") == 1
    assert "PatientName matches <hidden>: yes" in chest
    assert "Modality in [CR, DX]: yes (Modality = 'DX')" in chest
    assert "series filter of 'cxr': 1 of 2 file(s) included" in chest
    assert f"{study}/s1/frontal.dcm: this series is included" in chest
    assert f"{study}/s2/lateral.dcm: this series is skipped" in chest
    assert "would do: infer (dry run)" in chest
    assert ct.startswith("2 of 2: 1 file(s) in 1 series") and "would do: nothing" in ct
    assert "2 study(ies) (3 file(s)) evaluated, 0 file(s) skipped; nothing was sent" in out
    for secret in PHI:
        assert secret not in out
    # and no raw UIDs other than the (standard) SOP Class UID
    for uid_root in ("1.2.826.0.1.3680043",):
        assert uid_root not in out


def test_wrong_calling_ae_and_unreadable_file(study: Path, cfg: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("Roe^Richard PID-4242")
    code = main(["rules", "test", "--config", str(cfg), str(study / "s1"), str(junk)])
    out = capsys.readouterr().out
    assert code == 0  # documented: a skipped non-DICOM file is listed, not a failure
    assert "1 study(ies) (1 file(s)) evaluated, 1 file(s) skipped" in out
    assert main(["rules", "test", "--config", str(cfg), str(junk)]) == 1  # nothing evaluated
    assert "calling AE equals MODALITY1: no (calling AE unknown)" in out
    assert f"{junk}: not readable as DICOM (InvalidDicomError), skipped" in out
    for secret in PHI:
        assert secret not in out


def test_bad_config_exit_2(tmp_path: Path, study: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes:\n  - name: x\n    match: {attribute: Modalty, equals: CR}\n"
                   "    action: discard\n")
    proc = subprocess.run([sys.executable, "-m", "node", "rules", "test", "--config", str(bad),
                           str(study)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 2
    assert "routes[0].match.attribute: unknown DICOM keyword 'Modalty'" in proc.stderr


def test_example_config_dry_run(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["rules", "test", "--config", str(ROOT / "config" / "node.example.yaml"),
                 "--calling-ae", "PACS", "--at", "2026-11-23T23:30:00", str(study / "s1")])
    out = capsys.readouterr().out
    assert code == 0
    assert "would do: infer; forward_deidentified (dry run)" in out


def test_bad_time_is_usage_error(study: Path, cfg: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["rules", "test", "--config", str(cfg), "--at", "noonish", str(study)])
    assert info.value.code == 2
