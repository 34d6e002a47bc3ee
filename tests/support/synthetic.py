"""Synthetic CT studies for the demo, tests and benchmarks (no real patient data).

Built from pydicom's bundled ``CT_small.dcm`` header, with fresh UIDs and a fake patient so the
files are realistic enough for any peer (dcmtk, Orthanc) yet contain nothing real.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

__all__ = ["synthetic_ct_study", "write_study"]


def _template() -> Dataset:
    path = get_testdata_file("CT_small.dcm", download=False)
    if path is None:  # pragma: no cover - bundled with pydicom
        raise FileNotFoundError("pydicom's CT_small.dcm test file is missing")
    return dcmread(str(path))


def synthetic_ct_study(n: int, size: int = 64, seed: int = 0) -> list[Dataset]:
    """``n`` CT slices (``size`` x ``size``, int16) of one new study and series."""
    rng = np.random.default_rng(seed)
    base = _template()
    study, series = generate_uid(), generate_uid()
    out = []
    for i in range(n):
        ds = copy.deepcopy(base)
        ds.file_meta = FileMetaDataset(copy.deepcopy(base.file_meta))
        ds.PatientName = "SYNTHETIC^PATIENT"
        ds.PatientID = f"SYN{seed:06d}"
        ds.AccessionNumber = f"ACC{seed:06d}"
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        ds.Rows = ds.Columns = size
        ds.PixelData = rng.integers(0, 2000, (size, size), dtype=np.int16).tobytes()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        out.append(ds)
    return out


def write_study(datasets: list[Dataset], outdir: Path) -> list[Path]:
    """Write datasets as DICOM files ``outdir/NNNNN.dcm``."""
    outdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(datasets):
        p = outdir / f"{i:05d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths
