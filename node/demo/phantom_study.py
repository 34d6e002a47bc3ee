"""Synthetic chest radiograph studies for the demo, the end-to-end test and the benchmark.

Each image is a CR instance whose pixels are a non-clinical phantom from
:mod:`secure_infer.demo.phantoms` (with or without a lesion), with made-up patient identity
planted in the usual places, including free text, so tests can prove it never leaves the node.
Nothing here describes a real person.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from node.sr import write_dataset_atomic
from secure_infer import dicom_like_phantom

__all__ = ["CR_STORAGE", "PlantedIdentity", "phantom_cr_study", "write_study_files"]

CR_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1")


@dataclass(frozen=True)
class PlantedIdentity:
    """Made-up identifiers planted in a synthetic study (tests scan for them)."""

    patient_name: str = "Testpatient^Wilhelmina^Q"
    patient_id: str = "MRN-5550192"
    accession: str = "ACC-20261123-77"
    birth_date: str = "19480229"

    def needles(self) -> list[bytes]:
        """Byte strings that must never appear outside the hospital."""
        family = self.patient_name.split("^")[0]
        return [
            family.encode(),
            family.upper().encode(),
            self.patient_id.encode(),
            self.accession.encode(),
            self.birth_date.encode(),
        ]


def phantom_cr_study(
    lesions: Sequence[bool],
    *,
    seed: int = 0,
    size: int = 256,
    identity: PlantedIdentity | None = None,
    study_uid: str | None = None,
) -> list[Dataset]:
    """One study with one CR image per entry of ``lesions`` (in one series)."""
    who = identity or PlantedIdentity()
    study = study_uid or str(generate_uid())
    series_uid = generate_uid()
    out = []
    for n, lesion in enumerate(lesions, start=1):
        px = dicom_like_phantom(seed * 1000 + n, lesion, size=size)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CR_STORAGE
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = CR_STORAGE
        ds.PatientName = who.patient_name
        ds.PatientID = who.patient_id
        ds.PatientBirthDate = who.birth_date
        ds.PatientSex = "F"
        ds.StudyInstanceUID = study
        ds.StudyDate = "20261123"
        ds.StudyTime = "081500"
        ds.ReferringPhysicianName = "Referrer^Rita"
        ds.StudyID = "4711"
        ds.AccessionNumber = who.accession
        ds.StudyDescription = "XR CHEST PA"
        ds.Modality = "CR"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = 1
        ds.Manufacturer = "Synthetic Modality Inc"
        ds.ManufacturerModelName = "PhantomCR"
        ds.InstitutionName = "St. Example Hospital"
        ds.InstanceNumber = n
        ds.PatientOrientation = ["L", "F"]
        ds.ContentDate = "20261123"
        ds.ContentTime = "081600"
        ds.BodyPartExamined = "CHEST"
        ds.ViewPosition = "PA"
        ds.ImageComments = f"{who.patient_name} {who.patient_id} portable"
        ds.BurnedInAnnotation = "NO"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = px.photometric
        ds.Rows = size
        ds.Columns = size
        ds.BitsAllocated = 16
        ds.BitsStored = px.bits_stored
        ds.HighBit = px.bits_stored - 1
        ds.PixelRepresentation = 0
        ds.RescaleSlope = px.rescale_slope
        ds.RescaleIntercept = px.rescale_intercept
        ds.WindowCenter = px.window_center
        ds.WindowWidth = px.window_width
        ds.PixelData = px.pixels.tobytes()
        out.append(ds)
    return out


def write_study_files(datasets: Sequence[Dataset], folder: Path) -> list[Path]:
    """Write each dataset as ``<n>.dcm`` (DICOM Part 10) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, ds in enumerate(datasets):
        path = folder / f"{n:04d}.dcm"
        write_dataset_atomic(ds, path)
        paths.append(path)
    return paths
