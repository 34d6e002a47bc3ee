"""Synthetic PHI corpus: DICOM files full of planted (fake) identifiers, and what was planted.

No real patient data: every name, ID and date is invented. Each patient gets
- CT series 1 (2 images) and CT series 2 (1 image referencing series 1 by ReferencedImageSequence
  and SourceImageSequence), all sharing a Frame of Reference;
- an SR document whose content items name the patient (PNAME, TEXT, DATE, UIDREF) and whose
  evidence sequence references every CT instance;
- an ultrasound image with Burned In Annotation = YES (must be blocked);
- a secondary capture "dose screen" from device ACME/DOSESCREEN 16x16 with text burned into rows
  0-3 (blocked by default, released by a device mask).
PHI is planted as: names with variants (caret form, lower case, Unicode, titles/suffixes), IDs
and accession numbers repeated in free text, nested sequences three levels deep, private creator
blocks (one allow-listed, one not), UIDs with embedded dates, dates/times of every VR including
DT with UTC offsets, and ages over 89.

``generate(out_dir)`` writes the files and returns a :class:`Manifest` for
``tests.support.phi_scorer``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

__all__ = [
    "DOSE_MASK",
    "SAFE_CREATOR",
    "Manifest",
    "PatientPlant",
    "generate",
]

CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.22"
US_CLASS = "1.2.840.10008.5.1.4.1.1.6.1"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
SAFE_CREATOR = "BLINDREAD SAFE TEST"
UNSAFE_CREATOR = "ACME PHI STORE"
DOSE_MASK = {
    "manufacturer": "ACME",
    "model": "DOSESCREEN",
    "rows": 16,
    "columns": 16,
    "regions": [{"x": 0, "y": 0, "width": 16, "height": 4}],
}

_PEOPLE = [
    ("QUAXLEY", "Zebulon", "Ignatius", "Dr.", "III"),
    ("Ħüßmann", "Þórunn", "", "Frau", ""),
    ("O'VRANDELL", "Marguerite", "Ysolde", "Mrs", ""),
]
_PHYSICIANS = ["KRONFELD^Bartholomew", "Wexworthy^Ottilie^^Prof."]


@dataclass
class PatientPlant:
    """What was planted for one patient (all fake)."""

    patient_id: str
    other_id: str
    accession: str
    name: str
    name_parts: list[str]
    physician_parts: list[str]
    birth_date: str
    study_date: str
    study_uid: str
    files: dict[str, str] = field(default_factory=dict)  # rel path -> role
    sop_uids: dict[str, str] = field(default_factory=dict)  # rel path -> SOP Instance UID


@dataclass
class Manifest:
    """Everything the scorer needs: planted strings, per-patient facts, file roles."""

    patients: list[PatientPlant]
    phi_strings: set[str]
    """Strings that must not appear in any output (case/accent-insensitive)."""
    date_strings: set[str]
    """Original dates: absent unless full dates are retained."""
    uids: set[str]
    """Every original instance-level UID (all must be replaced unless retain_uids)."""
    safe_private_value: str
    unsafe_private_values: set[str]
    device_strings: set[str]
    """Kept under retain_device_identity, else absent."""
    institution_strings: set[str]
    """Kept under retain_institution_identity, else absent."""


def _uid(rng: random.Random, date: str) -> str:
    """A realistic UID with an embedded acquisition date and time (a classic leak)."""
    return f"1.2.826.0.1.3680043.9.7433.{date}{rng.randint(100000, 999999)}.{rng.randint(1, 99999)}"


def _meta(ds: Dataset) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.SourceApplicationEntityTitle = "QUAXLEY_WS"
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128


def _patient_module(ds: Dataset, p: PatientPlant, person: tuple[str, ...], idx: int) -> None:
    fam, giv, mid, prefix, suffix = person
    variants = [
        f"{fam}^{giv}^{mid}^{prefix}^{suffix}".rstrip("^"),
        f"{fam.lower()}^{giv.lower()}",
        f"{giv} {fam}",
    ]
    ds.PatientName = variants[idx % len(variants)]
    ds.PatientID = p.patient_id
    ds.IssuerOfPatientID = "GENERAL HOSPITAL OF QUAXTON"
    ds.OtherPatientIDs = p.other_id
    ds.OtherPatientNames = variants[1]
    ds.PatientBirthName = f"{fam}^{giv}"
    ds.PatientMotherBirthName = "Šťastná^Marie"
    ds.PatientBirthDate = p.birth_date
    ds.PatientSex = "M"
    ds.PatientAge = "093Y"
    ds.PatientAddress = "17 Quaxley Lane, Quaxton 90210"
    ds.PatientTelephoneNumbers = "(555) 867-5309"
    ds.AdditionalPatientHistory = f"Mr {fam} ({p.patient_id}) reports chest pain since 2020-01-02"
    item = Dataset()
    item.PatientID = p.other_id
    item.IssuerOfPatientID = "QUAXTON CLINIC"
    ds.OtherPatientIDsSequence = [item]


def _study_module(ds: Dataset, p: PatientPlant, rng: random.Random) -> None:
    ds.StudyInstanceUID = p.study_uid
    ds.StudyDate = p.study_date
    ds.StudyTime = "101530.123"
    ds.AccessionNumber = p.accession
    ds.StudyID = f"S{p.accession[-4:]}"
    ds.ReferringPhysicianName = _PHYSICIANS[0]
    ds.StudyDescription = f"CT chest {p.name_parts[0]} acc {p.accession}"
    ds.InstitutionName = "General Hospital of Quaxton"
    ds.InstitutionAddress = "1 Hospital Road, Quaxton"
    ds.StationName = "QUAXCT01"
    ds.OperatorsName = _PHYSICIANS[1]
    ds.PerformingPhysicianName = _PHYSICIANS[0]
    ds.DeviceSerialNumber = "SN-4471-QX"
    # three levels deep: RequestAttributes > ReferencedStudy item / nested code item with PHI
    lvl3 = Dataset()
    lvl3.CodeValue = "XYZ"
    lvl3.CodingSchemeDesignator = "99QX"
    lvl3.CodeMeaning = f"protocol for {p.name_parts[0]}"
    lvl3.PatientID = p.patient_id
    lvl3.PersonName = p.name
    lvl2 = Dataset()
    lvl2.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    lvl2.ReferencedSOPInstanceUID = p.study_uid
    lvl2.PurposeOfReferenceCodeSequence = [lvl3]
    lvl1 = Dataset()
    lvl1.RequestedProcedureID = f"RP{p.accession}"
    lvl1.ScheduledProcedureStepID = f"SPS{p.accession}"
    lvl1.AccessionNumber = p.accession
    lvl1.RequestedProcedureDescription = f"chest CT for {p.name}"
    lvl1.ReferencedStudySequence = [lvl2]
    ds.RequestAttributesSequence = [lvl1]
    ds.ReferencedStudySequence = [lvl2]


def _private(ds: Dataset, p: PatientPlant) -> None:
    block = ds.private_block(0x0009, UNSAFE_CREATOR, create=True)
    block.add_new(0x10, "LO", p.name)
    block.add_new(0x11, "LO", p.patient_id)
    safe = ds.private_block(0x0019, SAFE_CREATOR, create=True)
    safe.add_new(0x10, "DS", "1.25")  # allow-listed
    safe.add_new(0x11, "LO", f"acc {p.accession}")  # same creator, not allow-listed


def _image(ds: Dataset, rng: random.Random, rows: int = 8, cols: int = 8) -> bytes:
    arr = np.array([rng.randint(-1000, 2000) for _ in range(rows * cols)], dtype=np.int16)
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = arr.tobytes()
    return bytes(ds.PixelData)


def _ct(
    p: PatientPlant,
    person: tuple[str, ...],
    rng: random.Random,
    series_uid: str,
    for_uid: str,
    idx: int,
    series_no: int,
) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = CT_CLASS
    ds.SOPInstanceUID = _uid(rng, p.study_date)
    ds.Modality = "CT"
    ds.Manufacturer = "ACME"
    ds.ManufacturerModelName = "CT9000"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    _patient_module(ds, p, person, idx)
    _study_module(ds, p, rng)
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_no
    ds.InstanceNumber = idx + 1
    ds.SeriesDate = p.study_date
    ds.SeriesTime = "101600"
    ds.AcquisitionDate = p.study_date
    ds.AcquisitionTime = "101700.5"
    ds.AcquisitionDateTime = f"{p.study_date}101700.123456+0100"
    ds.ContentDate = p.study_date
    ds.ContentTime = "101800"
    ds.InstanceCreationDate = p.study_date
    ds.FrameOfReferenceUID = for_uid
    ds.BurnedInAnnotation = "NO"
    ds.ImageComments = f"{p.name_parts[1].lower()} {p.name_parts[0].lower()} DOB {p.birth_date}"
    _private(ds, p)
    _image(ds, rng)
    _meta(ds)
    return ds


def _sr(
    p: PatientPlant, person: tuple[str, ...], rng: random.Random, refs: list[tuple[str, str]]
) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = SR_CLASS
    ds.SOPInstanceUID = _uid(rng, p.study_date)
    ds.Modality = "SR"
    _patient_module(ds, p, person, 0)
    _study_module(ds, p, rng)
    ds.SeriesInstanceUID = _uid(rng, p.study_date)
    ds.SeriesNumber = 99
    ds.InstanceNumber = 1
    ds.ContentDate = p.study_date
    ds.ContentTime = "120000"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "VERIFIED"
    ver = Dataset()
    ver.VerifyingObserverName = _PHYSICIANS[0]
    ver.VerificationDateTime = f"{p.study_date}120500+0000"
    org = Dataset()
    org.CodeValue, org.CodingSchemeDesignator, org.CodeMeaning = "QX1", "99QX", "Quaxton radiology"
    ver.VerifyingObserverIdentificationCodeSequence = [org]
    ver.VerifyingOrganization = "General Hospital of Quaxton"
    ds.VerifyingObserverSequence = [ver]
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"

    def concept(code: str, meaning: str) -> Dataset:
        c = Dataset()
        c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = code, "DCM", meaning
        return c

    title = concept("126000", "Imaging Measurement Report")
    ds.ConceptNameCodeSequence = [title]
    items = []
    pn = Dataset()
    pn.RelationshipType, pn.ValueType = "HAS OBS CONTEXT", "PNAME"
    pn.ConceptNameCodeSequence = [concept("121008", "Person Observer Name")]
    pn.PersonName = _PHYSICIANS[1]
    items.append(pn)
    subj = Dataset()
    subj.RelationshipType, subj.ValueType = "HAS OBS CONTEXT", "PNAME"
    subj.ConceptNameCodeSequence = [concept("121029", "Subject Name")]
    subj.PersonName = f"{person[0]}^{person[1]}"
    items.append(subj)
    txt = Dataset()
    txt.RelationshipType, txt.ValueType = "CONTAINS", "TEXT"
    txt.ConceptNameCodeSequence = [concept("121106", "Comment")]
    txt.TextValue = (
        f"Patient {person[1]} {person[0].upper()}, MRN {p.patient_id}, accession {p.accession}, "
        f"born {p.birth_date[:4]}-{p.birth_date[4:6]}-{p.birth_date[6:]}; call 555-867-5309. "
        "No nodule."
    )
    # nested: container > text item, with a DATE and a UIDREF beneath
    date_item = Dataset()
    date_item.RelationshipType, date_item.ValueType = "HAS PROPERTIES", "DATE"
    date_item.ConceptNameCodeSequence = [concept("111060", "Study Date")]
    date_item.Date = p.study_date
    uid_item = Dataset()
    uid_item.RelationshipType, uid_item.ValueType = "HAS PROPERTIES", "UIDREF"
    uid_item.ConceptNameCodeSequence = [concept("110180", "Study Instance UID")]
    uid_item.UID = p.study_uid
    txt.ContentSequence = [date_item, uid_item]
    items.append(txt)
    ds.ContentSequence = items
    series: dict[str, list[str]] = {}
    for series_uid, sop_uid in refs:
        series.setdefault(series_uid, []).append(sop_uid)
    ev = Dataset()
    ev.StudyInstanceUID = p.study_uid
    ev.ReferencedSeriesSequence = []
    for series_uid, sops in series.items():
        s = Dataset()
        s.SeriesInstanceUID = series_uid
        s.ReferencedSOPSequence = []
        for sop in sops:
            r = Dataset()
            r.ReferencedSOPClassUID = CT_CLASS
            r.ReferencedSOPInstanceUID = sop
            s.ReferencedSOPSequence.append(r)
        ev.ReferencedSeriesSequence.append(s)
    ds.CurrentRequestedProcedureEvidenceSequence = [ev]
    _meta(ds)
    return ds


def _burned(p: PatientPlant, person: tuple[str, ...], rng: random.Random, kind: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = US_CLASS if kind == "us" else SC_CLASS
    ds.SOPInstanceUID = _uid(rng, p.study_date)
    ds.Modality = "US" if kind == "us" else "CT"
    _patient_module(ds, p, person, 0)
    _study_module(ds, p, rng)
    ds.SeriesInstanceUID = _uid(rng, p.study_date)
    ds.SeriesNumber = 50 if kind == "us" else 51
    ds.InstanceNumber = 1
    if kind == "us":
        ds.Manufacturer, ds.ManufacturerModelName = "ACME", "SONO5"
        ds.BurnedInAnnotation = "YES"
    else:
        ds.Manufacturer, ds.ManufacturerModelName = DOSE_MASK["manufacturer"], DOSE_MASK["model"]
        ds.ImageType = ["DERIVED", "SECONDARY", "SCREEN SAVE"]
    ds.Rows = ds.Columns = 16
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    arr = np.full((16, 16), 40, dtype=np.uint8)
    arr[0:4, :] = 255  # the "burned-in text" band
    arr[8:, 8:] = np.arange(64, dtype=np.uint8).reshape(8, 8)
    ds.PixelData = arr.tobytes()
    _meta(ds)
    return ds


def generate(out_dir: Path, seed: int = 1234, n_patients: int = 3) -> Manifest:
    """Write the corpus under ``out_dir`` and return what was planted."""
    rng = random.Random(seed)
    patients: list[PatientPlant] = []
    phi: set[str] = set()
    dates: set[str] = set()
    uids: set[str] = set()
    unsafe_private: set[str] = set()
    for i in range(n_patients):
        person = _PEOPLE[i % len(_PEOPLE)]
        study_date = f"2021{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
        pid = f"QX{rng.randint(10**7, 10**8 - 1)}"
        p = PatientPlant(
            patient_id=pid,
            other_id=f"MRN{rng.randint(10**6, 10**7 - 1)}",
            accession=f"A{rng.randint(10**6, 10**7 - 1)}",
            name=f"{person[0]}^{person[1]}",
            name_parts=[person[0], person[1]] + ([person[2]] if person[2] else []),
            physician_parts=["KRONFELD", "Bartholomew", "Wexworthy", "Ottilie"],
            birth_date=f"19{rng.randint(20, 32)}0{rng.randint(1, 9)}1{rng.randint(0, 9)}",
            study_date=study_date,
            study_uid=_uid(rng, study_date),
        )
        pdir = out_dir / f"{person[0]}_{pid}"
        pdir.mkdir(parents=True, exist_ok=True)
        for_uid = _uid(rng, study_date)
        s1, s2 = _uid(rng, study_date), _uid(rng, study_date)
        refs: list[tuple[str, str]] = []
        cts = [_ct(p, person, rng, s1, for_uid, j, 1) for j in range(2)]
        ct2 = _ct(p, person, rng, s2, for_uid, 2, 2)
        ref = Dataset()
        ref.ReferencedSOPClassUID = CT_CLASS
        ref.ReferencedSOPInstanceUID = cts[0].SOPInstanceUID
        ct2.ReferencedImageSequence = [ref]
        src = Dataset()
        src.ReferencedSOPClassUID = CT_CLASS
        src.ReferencedSOPInstanceUID = cts[1].SOPInstanceUID
        ct2.SourceImageSequence = [src]
        for j, ds in enumerate([*cts, ct2]):
            rel = f"{pdir.name}/ct_{j}.dcm"
            ds.save_as(out_dir / rel, enforce_file_format=True)
            p.files[rel] = "ct"
            p.sop_uids[rel] = ds.SOPInstanceUID
            refs.append((ds.SeriesInstanceUID, ds.SOPInstanceUID))
            uids |= {ds.SOPInstanceUID, ds.SeriesInstanceUID}
        sr = _sr(p, person, rng, refs)
        for name, ds, role in [
            ("sr.dcm", sr, "sr"),
            ("us.dcm", _burned(p, person, rng, "us"), "us"),
            ("dose.dcm", _burned(p, person, rng, "dose"), "dose"),
        ]:
            rel = f"{pdir.name}/{name}"
            ds.save_as(out_dir / rel, enforce_file_format=True)
            p.files[rel] = role
            p.sop_uids[rel] = ds.SOPInstanceUID
            uids |= {ds.SOPInstanceUID, ds.SeriesInstanceUID}
        uids |= {p.study_uid, for_uid}
        phi |= {
            pid,
            p.other_id,
            p.accession,
            *p.name_parts,
            *p.physician_parts,
            "Šťastná",
            "Quaxley Lane",
            "867-5309",
            "QUAXLEY_WS",
            f"RP{p.accession}",
            f"SPS{p.accession}",
            p.birth_date,
            f"{p.birth_date[:4]}-{p.birth_date[4:6]}-{p.birth_date[6:]}",
        }
        dates |= {study_date}
        unsafe_private |= {p.name, pid, f"acc {p.accession}"}
        patients.append(p)
    # embedded dates inside UIDs must not survive either (unless full dates retained)
    return Manifest(
        patients=patients,
        phi_strings={s for s in phi if s},
        date_strings=dates,
        uids=uids,
        safe_private_value="1.25",
        unsafe_private_values=unsafe_private,
        device_strings={"SN-4471-QX", "QUAXCT01"},
        institution_strings={"Quaxton"},
    )
