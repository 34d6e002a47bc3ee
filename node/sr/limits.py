"""Value-length limits for what result objects copy from the source images (PS3.5 Table 6.2-1).

The SR and the summary image copy the patient and study modules from the first source image.
Those values come from whoever sent the study; a value longer than its VR allows (a 10 MB
Patient Name) used to be copied as is, and pydicom then wrote it as a 10 MB ``UN`` element
because a PN cannot hold more than 64 KiB in an explicit-VR file. :func:`within_vr_limits`
returns the copy a result object may be built from:

- a text or name value longer than its VR's maximum is **truncated** to that maximum (PN: each
  component group to 64 characters; multi-valued elements value by value). Truncation keeps
  the result deliverable and in the right study; the value was not valid DICOM to begin with,
  and what is cut off is display text, not what a PACS files the object under.
- an **identifier** longer than its VR allows (any UI, Patient ID, Issuer of Patient ID,
  Accession Number, Study ID, Other Patient IDs) is **refused** with :class:`SrError` (a job
  error): a truncated identifier may be another patient's or another study's, and filing a
  result under the wrong patient is worse than not filing it.
- an element with VR ``UN`` (a value we cannot interpret) is not copied; a Type 2 attribute
  is then written empty, as for an absent one.
- VRs without a standard maximum (UC, UT, UR) are capped at 10240 characters (LT's maximum):
  no patient or study attribute needs more in a result object.

Nothing here logs a value: only the attribute keyword, its VR and the lengths.
"""

from __future__ import annotations

import logging

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from node.sr.errors import SrError

__all__ = ["IDENTIFIER_KEYWORDS", "MAX_LENGTH", "within_vr_limits"]

log = logging.getLogger(__name__)

MAX_LENGTH: dict[str, int] = {
    "AE": 16,
    "AS": 4,
    "CS": 16,
    "DA": 8,
    "DS": 16,
    "DT": 26,
    "IS": 12,
    "LO": 64,
    "LT": 10240,
    "PN": 64,  # per component group (alphabetic, ideographic, phonetic)
    "SH": 16,
    "ST": 1024,
    "TM": 14,
    "UI": 64,
    # no standard maximum (2^32 - 2); our cap for what a result object copies
    "UC": 10240,
    "UR": 10240,
    "UT": 10240,
}
"""Maximum value length in characters by VR (PS3.5 Table 6.2-1), per value."""

IDENTIFIER_KEYWORDS = frozenset(
    {"PatientID", "IssuerOfPatientID", "AccessionNumber", "StudyID", "OtherPatientIDs"}
)
"""Attributes (besides every UI) never truncated: an oversize one fails the job instead."""


def _too_long(vr: str, value: str) -> bool:
    limit = MAX_LENGTH[vr]
    if vr == "PN":
        return any(len(group) > limit for group in value.split("="))
    return len(value) > limit


def _cut(vr: str, value: str) -> str:
    limit = MAX_LENGTH[vr]
    if vr == "PN":
        return "=".join(group[:limit] for group in value.split("="))
    if vr in _TEXT_VRS:
        return value[:limit]
    return value[:limit].rstrip(" ")  # padding spaces are not part of a short-string value


_TEXT_VRS = frozenset({"LT", "ST", "UT", "UC", "UR"})


def _values(elem: DataElement) -> list[str] | None:
    """The element's string values, or None when it holds something else (bytes, numbers)."""
    raw = elem.value
    items = list(raw) if isinstance(raw, (MultiValue, list, tuple)) else [raw]
    out = []
    for item in items:
        if item is None:
            out.append("")
        elif isinstance(item, str) or elem.VR == "PN":
            out.append(str(item))
        else:
            return None  # IS/DS already parsed to numbers: their text fit when it was read
    return out


def _limit_element(elem: DataElement, path: str) -> DataElement | None:
    vr = elem.VR
    if vr == "UN":
        log.warning("source attribute %s has VR UN: not copied into the result", path)
        return None
    if vr == "SQ":
        items = Sequence(
            [_limit_dataset(item, f"{path}[{i}].") for i, item in enumerate(elem.value)]
        )
        return DataElement(elem.tag, vr, items)
    if vr not in MAX_LENGTH or elem.value is None:
        return elem
    values = _values(elem)
    if values is None or not any(_too_long(vr, v) for v in values):
        return elem
    longest = max(len(v) for v in values)
    if vr == "UI" or elem.keyword in IDENTIFIER_KEYWORDS:
        raise SrError(
            f"source_datasets: {path} is longer than VR {vr} allows "
            f"({longest} > {MAX_LENGTH[vr]} characters); an identifier is never truncated"
        )
    log.warning(
        "source attribute %s is longer than VR %s allows (%d > %d characters): truncated",
        path,
        vr,
        longest,
        MAX_LENGTH[vr],
    )
    cut = [_cut(vr, v) for v in values]
    return DataElement(elem.tag, vr, cut if len(cut) > 1 else cut[0])


def _limit_dataset(ds: Dataset, prefix: str = "") -> Dataset:
    out = Dataset()
    for elem in ds:
        name = elem.keyword or f"({elem.tag.group:04X},{elem.tag.element:04X})"
        limited = _limit_element(elem, prefix + name)
        if limited is not None:
            out.add(limited)
    return out


def within_vr_limits(ds: Dataset) -> Dataset:
    """A copy of ``ds`` whose values fit their VR (see the module docstring); ``ds`` unchanged.

    Elements that fit are shared with ``ds``, not copied.

    Raises
    ------
    SrError
        When an identifier (any UI, Patient ID, Accession Number, ...) is longer than its VR
        allows; the message names the attribute, never its value.
    """
    out = _limit_dataset(ds)
    if hasattr(ds, "file_meta"):
        out.file_meta = ds.file_meta
    return out
