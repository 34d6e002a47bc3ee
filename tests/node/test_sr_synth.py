"""Synthetic source studies for the SR tests (small CR/DX images made with pydicom).

The helpers are imported by the other ``test_sr*`` modules; the tests here check that the
synthetic originals are themselves valid (so an SR failure is never blamed on a broken source).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from secure_infer.manifest import Manifest
from tests.support.peers import require_tool

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"


def make_image(
    study_uid: str,
    series_uid: str,
    instance_number: int,
    *,
    modality: str = "CR",
    patient_name: str = "Doe^Jane",
    patient_id: str = "PID-0001",
    accession: str = "ACC-42",
    size: int = 32,
    seed: int = 0,
) -> Dataset:
    """A small, valid CR or DX (for presentation) image with realistic patient/study modules."""
    ds = Dataset()
    sop_class = CR_STORAGE if modality == "CR" else DX_PRESENTATION
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    # Patient
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    # General Study
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = "20260102"
    ds.StudyTime = "101500"
    ds.ReferringPhysicianName = "Ref^Doctor"
    ds.StudyID = "S1"
    ds.AccessionNumber = accession
    ds.StudyDescription = "Chest X-ray"
    # General Series
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 1
    # General Equipment
    ds.Manufacturer = "Synthetic Modality Inc"
    ds.ManufacturerModelName = "SynthX"
    # General Image
    ds.InstanceNumber = instance_number
    ds.PatientOrientation = ["L", "F"]
    ds.ContentDate = "20260102"
    ds.ContentTime = "101600"
    ds.BodyPartExamined = "CHEST"
    if modality == "CR":
        ds.ViewPosition = "PA"
    else:
        ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
        ds.ViewPosition = "PA"
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.RescaleType = "US"
        ds.WindowCenter = 2048
        ds.WindowWidth = 4096
        ds.BurnedInAnnotation = "NO"
        ds.ImagerPixelSpacing = [0.5, 0.5]
        ds.DetectorType = "SCINTILLATOR"
        ds.ImageLaterality = "U"
        ds.PatientOrientation = ["L", "F"]
        ds.AnatomicRegionSequence = [_code("51185008", "SCT", "Thorax")]
        ds.ViewCodeSequence = [_code("399348003", "SCT", "postero-anterior")]
        ds.ViewCodeSequence[0].ViewModifierCodeSequence = []
        ds.PresentationLUTShape = "IDENTITY"
        ds.AcquisitionContextSequence = []
        ds.KVP = 120
        ds.EstimatedRadiographicMagnificationFactor = round(1800 / 1700, 6)
        ds.DistanceSourceToDetector = 1800
        ds.DistanceSourceToPatient = 1700
        ds.ExposureTime = 10
        ds.XRayTubeCurrent = 200
        ds.Exposure = 2
        ds.ExposureInuAs = 2000
        ds.DetectorID = "D1"
        ds.DetectorConditionsNominalFlag = "YES"
        ds.DetectorTemperature = 30
        ds.Sensitivity = 100
        ds.DetectorBinning = [1, 1]
        ds.FieldOfViewShape = "RECTANGLE"
        ds.FieldOfViewDimensions = [size // 2, size // 2]
        ds.PixelSpacing = [0.5, 0.5]
        ds.PixelSpacingCalibrationType = "GEOMETRY"
        ds.PixelSpacingCalibrationDescription = "synthetic"
        ds.Grid = "NONE"
        ds.PositionerType = "COLUMN"
        ds.LossyImageCompression = "00"
    # Image Pixel
    rng = np.random.default_rng(seed + instance_number)
    pixels = rng.integers(0, 4096, size=(size, size), dtype=np.uint16)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = size
    ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def make_study(
    n_images: int = 3, n_series: int = 1, modality: str = "CR", **kw: object
) -> list[Dataset]:
    """``n_images`` images spread over ``n_series`` series of one new study."""
    study_uid = generate_uid()
    series = [generate_uid() for _ in range(n_series)]
    return [
        make_image(study_uid, series[i % n_series], i + 1, modality=modality, **kw)  # type: ignore[arg-type]
        for i in range(n_images)
    ]


def write_study(datasets: list[Dataset], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(datasets):
        p = folder / f"img{i:03d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def make_manifest(*, image_level: bool = True, not_for_primary_diagnosis: bool = True) -> Manifest:
    """A two- or three-label chest model manifest with SNOMED finding codes."""
    outputs = [
        {
            "name": "pneumothorax",
            "index": 0,
            "finding": {"scheme": "SCT", "value": "36118008", "meaning": "Pneumothorax"},
            "threshold": 0.5,
            "level": "study",
        },
        {
            "name": "cardiomegaly",
            "index": 1,
            "finding": {"scheme": "SCT", "value": "8186001", "meaning": "Cardiomegaly"},
            "threshold": 0.3,
            "level": "study",
        },
    ]
    if image_level:
        outputs.append(
            {
                "name": "nodule",
                "index": 2,
                "finding": {"scheme": "SCT", "value": "27925004", "meaning": "Nodule"},
                "threshold": 0.7,
                "level": "image",
            }
        )
    return Manifest.model_validate(
        {
            "name": "cxr-demo",
            "version": "2.1.0",
            "manufacturer": "Example AI Vendor",
            "model_name": "ChestNet Demo",
            "intended_use": "Triage of adult chest radiographs (demo)",
            "not_for_primary_diagnosis": not_for_primary_diagnosis,
            "input": {"shape": [1, 32, 32]},
            "outputs": outputs,
        }
    )


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """Run dicom3tools ``dciodvfy``; return its (errors, warnings) lines."""
    exe = require_tool("dciodvfy")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    errors = [ln for ln in lines if ln.startswith("Error")]
    warnings = [ln for ln in lines if ln.startswith("Warning")]
    return errors, warnings


@pytest.mark.peer
@pytest.mark.parametrize("modality", ["CR", "DX"])
def test_synthetic_originals_are_valid(tmp_path: Path, modality: str) -> None:
    study = make_study(2, modality=modality)
    [path, _] = write_study(study, tmp_path)
    errors, _warnings = dciodvfy(path)
    assert errors == []


def test_synthetic_study_shares_patient_and_study() -> None:
    study = make_study(4, n_series=2)
    assert len({d.StudyInstanceUID for d in study}) == 1
    assert len({d.SeriesInstanceUID for d in study}) == 2
    assert len({d.SOPInstanceUID for d in study}) == 4
