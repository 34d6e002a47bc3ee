"""Which revision of a study's result an SR is, and which earlier SRs it supersedes.

A result is amended when late images make a study larger: the new SR covers more images, so
its SOP Instance UID (:class:`node.sr.uids.ResultUids`) is new, and it is a *revision* of the
earlier one(s) in the sense of PS3.3 C.17.2 (SR Document General Module): it carries every
earlier version of the same result in Predecessor Documents Sequence (0040,A360), sits in the
same series (the series UID names the lineage: study + model name + model version), and its
Instance Number counts the revisions (1, 2, ...). The current result of a study is the SR that
no other SR of its series names as predecessor, which is also the one with the highest
Instance Number.

An SR whose coverage equals an earlier one is not an amendment but a resend: it takes that
SR's UID (same inputs), Instance Number and predecessors, so the rebuilt file is the same
document and a PACS that already holds it keeps one copy.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import Comprehensive3DSRStorage

__all__ = ["Revision", "revision_of"]


@dataclass(frozen=True)
class Revision:
    """Instance Number of the new SR and the earlier SRs it supersedes (oldest first)."""

    number: int
    predecessors: tuple[Dataset, ...]  # StudyInstanceUID, SeriesInstanceUID, SOPClassUID,
    # SOPInstanceUID of each: what highdicom's ``previous_versions`` reads

    @property
    def amended(self) -> bool:
        return bool(self.predecessors)


def _ref(study: str, series: str, sop_class: str, sop_instance: str) -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    return ds


def _instance_number(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("InstanceNumber") or 1))
    except (TypeError, ValueError):
        return 1


def _chain(ds: Dataset) -> list[Dataset]:
    """``ds``'s own predecessors (from its Predecessor Documents Sequence), then ``ds``."""
    out: list[Dataset] = []
    for study in ds.get("PredecessorDocumentsSequence", []):
        for series in study.get("ReferencedSeriesSequence", []):
            for ref in series.get("ReferencedSOPSequence", []):
                out.append(
                    _ref(
                        str(study.StudyInstanceUID),
                        str(series.SeriesInstanceUID),
                        str(ref.ReferencedSOPClassUID),
                        str(ref.ReferencedSOPInstanceUID),
                    )
                )
    out.append(
        _ref(
            str(ds.StudyInstanceUID),
            str(ds.SeriesInstanceUID),
            str(ds.SOPClassUID),
            str(ds.SOPInstanceUID),
        )
    )
    return out


def revision_of(series_uid: str, instance_uid: str, earlier: Iterable[Dataset]) -> Revision:
    """The revision an SR with these UIDs is, given ``earlier`` SRs (headers suffice).

    Only earlier Comprehensive 3D SRs of the same series (the same result lineage) count;
    anything else in ``earlier`` (another model version's SR, a summary image) is ignored.
    """
    lineage = [
        ds
        for ds in earlier
        if str(ds.get("SeriesInstanceUID", "")) == series_uid
        and str(ds.get("SOPClassUID", "")) == Comprehensive3DSRStorage
        and ds.get("SOPInstanceUID")
    ]
    for ds in lineage:
        if str(ds.SOPInstanceUID) == instance_uid:  # a resend of this very document
            return Revision(_instance_number(ds), tuple(_chain(ds)[:-1]))
    if not lineage:
        return Revision(1, ())
    seen: dict[str, Dataset] = {}
    for ds in sorted(lineage, key=lambda d: (_instance_number(d), str(d.SOPInstanceUID))):
        for ref in _chain(ds):
            if str(ref.SOPInstanceUID) != instance_uid:
                seen.setdefault(str(ref.SOPInstanceUID), ref)
    number = 1 + max(_instance_number(ds) for ds in lineage)
    return Revision(number, tuple(seen.values()))
