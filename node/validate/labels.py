"""The labels CSV of a local validation set, checked against the DICOM files under a folder.

Format (documented in ``docs/validate.md``)::

    path,sop_instance_uid,label
    chest/0001.dcm,,1
    ,1.2.826.0.1.3680043.8.498.1234,0

* a header row naming a ``label`` column and at least one of ``path`` (relative to the data
  folder, ``/`` separated) and ``sop_instance_uid``; other columns are ignored;
* each row fills exactly one of ``path`` / ``sop_instance_uid``; ``label`` is ``0`` or ``1``;
* blank lines and lines whose first cell starts with ``#`` are ignored.

Every problem is collected (not just the first) with its CSV line number, so a curator fixes the
file in one pass. Messages never repeat a UID from the file (a UID is an identifier); they quote
paths, which the curator chose and which the report shows anyway.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pydicom
from pydicom.errors import InvalidDicomError

from node.errors import NodeError

__all__ = ["DicomFile", "LabelError", "LabeledCase", "read_labels", "scan_dicom_files"]

log = logging.getLogger(__name__)

_MAX_QUOTE = 60


class LabelError(NodeError):
    """The labels CSV does not match the data folder; ``problems`` lists each one."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class DicomFile:
    """A DICOM file found under the data folder (its UID stays inside the node)."""

    relpath: str
    path: Path
    sop_instance_uid: str


@dataclass(frozen=True)
class LabeledCase:
    """One case to evaluate: a file, its label, and the CSV line that labeled it."""

    file: DicomFile
    label: int
    line: int


def scan_dicom_files(root: Path) -> tuple[list[DicomFile], int]:
    """All readable DICOM files with a SOP Instance UID below ``root`` (sorted by relative path),
    and how many other files were skipped."""
    found: list[DicomFile] = []
    skipped = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            uid = str(ds.SOPInstanceUID)
        except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError, KeyError):
            skipped += 1
            continue
        found.append(DicomFile(path.relative_to(root).as_posix(), path, uid))
    return found, skipped


def _quote(text: str) -> str:
    return repr(text if len(text) <= _MAX_QUOTE else text[:_MAX_QUOTE] + "...")


def _normalise_path(text: str) -> str | None:
    """A safe relative POSIX path, or None if absolute or escaping the folder."""
    p = PurePosixPath(text.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or not p.parts:
        return None
    return p.as_posix()


def read_labels(csv_path: Path, files: list[DicomFile]) -> list[LabeledCase]:
    """Parse ``csv_path`` and match its rows to ``files``; raises :class:`LabelError`.

    The returned cases are in CSV order.
    """
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise LabelError([f"{csv_path}: no such file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        problem = f"{csv_path}: cannot read as UTF-8 text ({type(exc).__name__})"
        raise LabelError([problem]) from None

    by_path = {f.relpath: f for f in files}
    by_uid: dict[str, list[DicomFile]] = {}
    for f in files:
        by_uid.setdefault(f.sop_instance_uid, []).append(f)

    problems: list[str] = []
    cases: list[LabeledCase] = []
    claimed: dict[str, int] = {}  # relpath -> line that labeled it
    header: list[str] | None = None
    reader = csv.reader(text.splitlines())
    for row in reader:
        line = reader.line_num
        cells = [c.strip() for c in row]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if header is None:
            header = [c.lower() for c in cells]
            missing = []
            if "label" not in header:
                missing.append("'label'")
            if "path" not in header and "sop_instance_uid" not in header:
                missing.append("'path' or 'sop_instance_uid'")
            if missing:
                columns = " and ".join(missing)
                raise LabelError(
                    [f"line {line}: header must name the column(s) {columns}; see docs/validate.md"]
                )
            continue
        if len(cells) != len(header):
            problems.append(f"line {line}: {len(cells)} fields, the header has {len(header)}")
            continue
        row_map = dict(zip(header, cells, strict=True))
        rel, uid, raw_label = row_map.get("path", ""), row_map.get("sop_instance_uid", ""), row_map[
            "label"
        ]
        if raw_label not in ("0", "1"):
            problems.append(f"line {line}: label must be 0 or 1, got {_quote(raw_label)}")
        if bool(rel) == bool(uid):
            problems.append(f"line {line}: fill exactly one of 'path' and 'sop_instance_uid'")
            continue
        target: DicomFile | None = None
        if rel:
            norm = _normalise_path(rel)
            if norm is None:
                problems.append(f"line {line}: path {_quote(rel)} must be relative, inside DIR")
                continue
            target = by_path.get(norm)
            if target is None:
                problems.append(f"line {line}: no DICOM file {_quote(norm)} under DIR")
                continue
        else:
            matches = by_uid.get(uid, [])
            if not matches:
                problems.append(
                    f"line {line}: SOP Instance UID not found in any DICOM file under DIR"
                )
                continue
            if len(matches) > 1:
                problems.append(
                    f"line {line}: SOP Instance UID is in {len(matches)} files ("
                    + ", ".join(_quote(m.relpath) for m in matches)
                    + "); label them by path"
                )
                continue
            target = matches[0]
        if target.relpath in claimed:
            problems.append(
                f"line {line}: {_quote(target.relpath)} is already labeled on line "
                f"{claimed[target.relpath]}"
            )
            continue
        claimed[target.relpath] = line
        if raw_label in ("0", "1"):
            cases.append(LabeledCase(target, int(raw_label), line))
    if header is None:
        problems.append(f"{csv_path}: empty; expected a header row and one row per case")
    elif not cases and not problems:
        problems.append(f"{csv_path}: no labeled cases")
    if problems:
        raise LabelError(problems)
    return cases
