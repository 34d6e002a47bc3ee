"""Reading source studies from a folder and writing result objects durably.

Writes go to a temp file in the target folder, are fsync'd, then renamed over the target, so a
crash leaves either the old file or the complete new one, never half an SR.
"""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from durable_io import atomic_write
from node.sr.errors import SrError

__all__ = ["read_source_dir", "write_dataset_atomic"]


def write_dataset_atomic(ds: Dataset, path: str | Path) -> None:
    """Save ``ds`` as a DICOM file at ``path`` (temp file, fsync, rename, fsync folder)."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    atomic_write(Path(path), buf.getbuffer(), mode=0o666)


def read_source_dir(folder: str | Path) -> tuple[list[Dataset], int]:
    """Headers of every image under ``folder`` (recursively), and how many files were skipped.

    Non-DICOM files and non-image objects (SR, KO, PR, ...) are skipped: only images can be
    analysed sources. Pixel data is not read; the SR only needs the headers.
    """
    root = Path(folder)
    if not root.is_dir():
        raise SrError(f"{root}: not a folder")
    found: list[Dataset] = []
    skipped = 0
    for p in sorted(x for x in root.rglob("*") if x.is_file()):
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            skipped += 1
            continue
        if "Rows" not in ds or "SOPInstanceUID" not in ds:
            skipped += 1
            continue
        found.append(ds)
    if not found:
        raise SrError(f"{root}: no DICOM image found ({skipped} other file(s) skipped)")
    return found, skipped
