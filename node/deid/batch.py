"""De-identify a directory tree of DICOM files into another (the ``blindread deid`` command).

Each output is written to a temp file in the target directory, fsync'd and renamed, so a crash
never leaves a half-written instance under its final name. Failures are collected by relative
path for the audit files written with ``--map-out``; nothing here prints or logs PHI.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

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
    uid_map: dict[str, str] = field(default_factory=dict, repr=False)
    patient_map: dict[str, str] = field(default_factory=dict, repr=False)
    problems: list[tuple[str, str]] = field(default_factory=list, repr=False)
    """(relative path, PHI-free reason) of skipped, blocked and failed files."""


def iter_files(root: Path) -> Iterator[Path]:
    """Every regular file under ``root`` in a stable (sorted) order."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
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


def deidentify_tree(
    in_dir: Path, out_dir: Path, deid: Deidentifier, *, fsync: bool = True
) -> BatchSummary:
    """De-identify every DICOM file under ``in_dir`` into ``out_dir`` (same relative layout)."""
    summary = BatchSummary()
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    for src in iter_files(in_dir):
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
