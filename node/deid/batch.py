"""De-identify a directory tree of DICOM files into another (the ``blindread deid`` command).

Each input is checked for truncation before it is processed (pydicom reads a file cut short
without complaint: the last value just comes back shorter), and a truncated one is reported,
not written. An output directory inside the input directory is never walked (a second run would
otherwise de-identify its own output). Progress is shown with tqdm on a terminal.

Each output is written to a temp file in the target directory, fsync'd and renamed, so a crash
never leaves a half-written instance under its final name. Failures are collected by relative
path for the audit files written with ``--map-out``; nothing here prints or logs PHI.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from tqdm import tqdm

from durable_io import atomic_write
from node.deid.engine import Deidentifier

__all__ = ["BatchSummary", "deidentify_tree", "iter_files", "write_mapping_csv"]

log = logging.getLogger(__name__)


@dataclass
class BatchSummary:
    """Counts and (PHI-bearing, node-only) mappings of one run."""

    files: int = 0
    written: int = 0
    blocked: int = 0
    skipped: int = 0
    errors: int = 0
    truncated: int = 0
    uid_map: dict[str, str] = field(default_factory=dict, repr=False)
    patient_map: dict[str, str] = field(default_factory=dict, repr=False)
    problems: list[tuple[str, str]] = field(default_factory=list, repr=False)
    """(relative path, PHI-free reason) of skipped, blocked and failed files."""


def iter_files(root: Path, exclude: Sequence[Path] = ()) -> Iterator[Path]:
    """Every regular file under ``root`` in a stable (sorted) order, outside ``exclude``."""
    skip = {p.resolve() for p in exclude}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if (Path(dirpath) / d).resolve() not in skip)
        for name in sorted(filenames):
            yield Path(dirpath) / name


def write_mapping_csv(path: Path, mapping: dict[str, str]) -> None:
    """``id_old,id_new`` rows, mode 0600 (the file holds PHI)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id_old", "id_new"])
    for old, new in sorted(mapping.items()):
        writer.writerow([old, new])
    atomic_write(path, buf.getvalue().encode("utf-8"), mode=0o600)
    os.chmod(path, 0o600)


_UNDEFINED = 0xFFFFFFFF
_PIXELS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def truncation(ds: Dataset) -> str | None:
    """Why ``ds`` (as read from its file) is cut short, or ``None``: its last value is shorter than
    its declared length, image attributes come without pixel data, or native pixel data is
    shorter than rows x columns x frames x samples x bits allocated."""
    tags = list(ds.keys())
    if tags:
        raw = ds.get_item(tags[-1])
        length = getattr(raw, "length", None)
        value = getattr(raw, "value", None)
        if (isinstance(length, int) and length != _UNDEFINED and isinstance(value, bytes)
                and len(value) < length):
            return f"file ends inside its last element ({len(value)} of {length} bytes)"
    if "Rows" in ds and "Columns" in ds and not any(k in ds for k in _PIXELS):
        return "image attributes but no pixel data (the file ends early)"
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if "PixelData" in ds and syntax is not None and not syntax.is_compressed:
        try:
            frames = int(ds.get("NumberOfFrames", 1) or 1)
            bits = int(ds.BitsAllocated)
            expected = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * frames
            need = (expected * bits + 7) // 8
        except (AttributeError, TypeError, ValueError):
            return None
        have = len(ds.PixelData)
        if have < need:
            return f"pixel data has {have} of {need} bytes"
    return None


def deidentify_tree(
    in_dir: Path,
    out_dir: Path,
    deid: Deidentifier,
    *,
    fsync: bool = True,
    exclude: Sequence[Path] = (),
    progress: bool | None = None,
) -> BatchSummary:
    """De-identify every DICOM file under ``in_dir`` into ``out_dir`` (same relative layout).

    ``out_dir`` and ``exclude`` (e.g. the mapping folder) are not read when they lie inside
    ``in_dir``. ``progress``: a tqdm bar on stderr (``None``: only on a terminal).
    """
    summary = BatchSummary()
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    files = list(iter_files(in_dir, exclude=(out_dir, *exclude)))
    for src in tqdm(files, desc="deid", unit="file", disable=None if progress is None
                    else not progress, file=sys.stderr):
        rel = src.relative_to(in_dir)
        summary.files += 1
        try:
            ds = pydicom.dcmread(src)
        except (InvalidDicomError, EOFError, OSError, ValueError) as exc:
            summary.skipped += 1
            summary.problems.append((str(rel), f"not readable as DICOM ({type(exc).__name__})"))
            continue
        if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
            summary.skipped += 1
            summary.problems.append((str(rel), "not a DICOM instance (no SOP Class/Instance UID)"))
            continue
        cut = truncation(ds)
        if cut is not None:
            summary.truncated += 1
            summary.problems.append((str(rel), f"truncated, not written: {cut}"))
            log.error("file %d is truncated; not written", summary.files)
            continue
        orig_pid = str(ds.get("PatientID", "") or "")
        try:
            result = deid.deidentify(ds)
            if result.dataset is None:
                summary.blocked += 1
                summary.problems.append((str(rel), f"blocked: {result.blocked_reason}"))
                continue
            buf = io.BytesIO()
            result.dataset.save_as(buf, enforce_file_format=False)
            atomic_write(out_dir / rel, buf.getbuffer(), mode=0o644, sync=fsync)
        except Exception as exc:  # one bad file must not stop the run
            summary.errors += 1
            summary.problems.append((str(rel), f"error: {type(exc).__name__}"))
            log.error("de-identification failed for file %d: %s", summary.files, type(exc).__name__)
            continue
        summary.written += 1
        summary.uid_map.update(result.uid_map)
        if orig_pid:
            summary.patient_map[orig_pid] = result.patient_pseudonym
    return summary
