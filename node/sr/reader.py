"""Read a BlindRead result SR back into plain findings (for ``blindread sr show`` and tests).

Tolerant when decoding (highdicom's motto): one pass over the content tree, checking only what
identifies a TID 1500 Comprehensive 3D SR, and each measurement group is read for what it carries;
a group missing an optional part gives ``None`` there instead of failing the whole report.
Hand-written on purpose: highdicom's ``from_dataset`` + per-query tree searches took seconds for
a 100-image study (deep copies and a content-item object per node per query), this pass takes
milliseconds. The tests check separately that highdicom's own parser reads the same SRs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset

from node.sr import concepts as c
from node.sr.errors import SrError

__all__ = ["ResultFinding", "ResultReport", "read_result_sr"]

_COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
_ALG_NAME = CodedConcept("111001", "DCM", "Algorithm Name")
_ALG_VERSION = CodedConcept("111003", "DCM", "Algorithm Version")
_ALG_PARAMS = CodedConcept("111002", "DCM", "Algorithm Parameters")


@dataclass(frozen=True)
class ResultFinding:
    """One measurement group: a label's result on the study or on one image."""

    label: str | None
    level: str | None  # "study" | "image"
    finding: tuple[str, str, str]  # (scheme, value, meaning)
    present: bool | None
    probability: float | None
    threshold: float | None
    tracking_identifier: str | None
    tracking_uid: str | None
    source_sop_instance_uids: tuple[str, ...]
    algorithm_name: str | None
    algorithm_version: str | None
    algorithm_parameters: dict[str, str] = field(default_factory=dict)
    comments: tuple[str, ...] = ()

    @property
    def computed_under_encryption(self) -> bool:
        return c.ENCRYPTION_STATEMENT in self.comments

    @property
    def not_for_primary_diagnosis(self) -> bool:
        return c.NOT_FOR_PRIMARY_DIAGNOSIS in self.comments


@dataclass(frozen=True)
class ResultReport:
    """What a result SR says, without patient identity."""

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    series_number: int | None
    series_description: str | None
    device_uid: str | None
    device_name: str | None
    device_manufacturer: str | None
    device_model_name: str | None
    findings: tuple[ResultFinding, ...]
    contributing_equipment: tuple[tuple[str, str], ...]  # (manufacturer, software versions)
    revision: int = 1  # Instance Number: 1, then 2, 3, ... for results amended for late images
    predecessor_uids: tuple[str, ...] = ()  # SOP Instance UIDs of the revisions it supersedes

    @property
    def study_findings(self) -> tuple[ResultFinding, ...]:
        return tuple(f for f in self.findings if f.level == "study")

    @property
    def image_findings(self) -> tuple[ResultFinding, ...]:
        return tuple(f for f in self.findings if f.level == "image")


def _name(item: Dataset) -> tuple[str, str]:
    seq = item.get("ConceptNameCodeSequence")
    if not seq:
        return ("", "")
    code = seq[0]
    value = code.get("CodeValue") or code.get("LongCodeValue") or code.get("URNCodeValue") or ""
    return (str(code.get("CodingSchemeDesignator", "")), str(value))


def _key(concept: CodedConcept) -> tuple[str, str]:
    return (concept.scheme_designator, concept.value)


def _coded(item: Dataset) -> tuple[str, str, str] | None:
    seq = item.get("ConceptCodeSequence")
    if not seq:
        return None
    code = seq[0]
    value = code.get("CodeValue") or code.get("LongCodeValue") or code.get("URNCodeValue") or ""
    return (str(code.get("CodingSchemeDesignator", "")), str(value), str(code.get("CodeMeaning")))


_FINDING = ("DCM", "121071")
_OBSERVER_TYPE = ("DCM", "121005")
_TRACKING_ID = ("DCM", "112039")
_TRACKING_UID = ("DCM", "112040")
_SOURCE_NAMES = {("SCT", "260753009"), ("DCM", "121112")}  # "Source", "Source of Measurement"


def _read_group(group: Dataset) -> ResultFinding:
    """One pass over the group's children (highdicom's per-query tree search is quadratic here,
    seconds for a 100-image study)."""
    finding = ("", "", "")
    codes_: list[tuple[tuple[str, str], tuple[str, str, str]]] = []
    texts: dict[tuple[str, str], list[str]] = {}
    probability: float | None = None
    tracking_id = tracking_uid = None
    sources: list[str] = []
    for item in group.get("ContentSequence", []):
        name = _name(item)
        vtype = item.get("ValueType")
        if vtype == "CODE":
            code = _coded(item)
            if code is None:
                continue
            if name == _FINDING:
                finding = code
            else:
                codes_.append((name, code))
        elif vtype == "TEXT":
            if name == _TRACKING_ID:
                tracking_id = str(item.get("TextValue", ""))
            else:
                texts.setdefault(name, []).append(str(item.get("TextValue", "")))
        elif vtype == "UIDREF" and name == _TRACKING_UID:
            tracking_uid = str(item.get("UID", ""))
        elif vtype == "NUM" and name == _key(c.PROBABILITY):
            mv = item.get("MeasuredValueSequence")
            if mv:
                probability = float(mv[0].NumericValue)
        elif vtype == "IMAGE" and name in _SOURCE_NAMES:
            for ref in item.get("ReferencedSOPSequence", []):
                sources.append(str(ref.ReferencedSOPInstanceUID))
    present: bool | None = None
    for name, coded in codes_:
        if name == finding[:2]:
            if coded[:2] == _key(c.PRESENT):
                present = True
            elif coded[:2] == _key(c.ABSENT):
                present = False
    params: dict[str, str] = {}
    for text in texts.get(_key(_ALG_PARAMS), []):
        pkey, sep, pvalue = text.partition("=")
        params[pkey if sep else text] = pvalue if sep else ""
    names, versions = texts.get(_key(_ALG_NAME), []), texts.get(_key(_ALG_VERSION), [])
    threshold: float | None
    try:
        threshold = float(params["output.threshold"])
    except (KeyError, ValueError):
        threshold = None
    return ResultFinding(
        label=params.get("output.label"),
        level=params.get("output.level"),
        finding=finding,
        present=present,
        probability=probability,
        threshold=threshold,
        tracking_identifier=tracking_id,
        tracking_uid=tracking_uid,
        source_sop_instance_uids=tuple(sources),
        algorithm_name=names[0] if names else None,
        algorithm_version=versions[0] if versions else None,
        algorithm_parameters=params,
        comments=tuple(texts.get(_key(c.COMMENT), [])),
    )


def _measurement_groups(root: Dataset) -> list[Dataset]:
    groups: list[Dataset] = []
    for item in root.get("ContentSequence", []):
        if item.get("ValueType") == "CONTAINER" and _name(item) == ("DCM", "126010"):
            groups.extend(
                g
                for g in item.get("ContentSequence", [])
                if g.get("ValueType") == "CONTAINER" and _name(g) == ("DCM", "125007")
            )
    return groups


def read_result_sr(ds: Dataset) -> ResultReport:
    """Parse a result SR (as written by :func:`node.sr.build_result_sr`).

    Raises
    ------
    SrError
        When ``ds`` is not a Comprehensive 3D SR holding a TID 1500 Measurement Report.
    """
    if str(ds.get("SOPClassUID", "")) != _COMPREHENSIVE_3D_SR:
        raise SrError("not a Comprehensive 3D SR document")
    templates = ds.get("ContentTemplateSequence") or []
    if ds.get("ValueType") != "CONTAINER" or not any(
        t.get("TemplateIdentifier") == "1500" for t in templates
    ):
        raise SrError("SR does not hold a TID 1500 Measurement Report")

    device: dict[tuple[str, str], str] = {}
    observer_is_device = False
    for item in ds.get("ContentSequence", []):
        if item.get("RelationshipType") != "HAS OBS CONTEXT":
            continue
        name = _name(item)
        if name == _OBSERVER_TYPE:
            observer_is_device = (_coded(item) or ("", "", ""))[:2] == ("DCM", "121007")
        elif observer_is_device and name not in device:
            value = item.get("UID") if item.get("ValueType") == "UIDREF" else item.get("TextValue")
            device[name] = str(value or "")
    findings = tuple(_read_group(g) for g in _measurement_groups(ds))
    equipment = tuple(
        (str(item.get("Manufacturer", "")), str(item.get("SoftwareVersions", "")))
        for item in ds.get("ContributingEquipmentSequence", [])
    )
    series_number = ds.get("SeriesNumber")
    return ResultReport(
        sop_instance_uid=str(ds.SOPInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        study_instance_uid=str(ds.StudyInstanceUID),
        series_number=None if series_number is None else int(series_number),
        series_description=ds.get("SeriesDescription"),
        device_uid=device.get(("DCM", "121012")),
        device_name=device.get(("DCM", "121013")),
        device_manufacturer=device.get(("DCM", "121014")),
        device_model_name=device.get(("DCM", "121015")),
        findings=findings,
        contributing_equipment=equipment,
        revision=_int(ds.get("InstanceNumber"), 1),
        predecessor_uids=tuple(
            str(ref.ReferencedSOPInstanceUID)
            for study in ds.get("PredecessorDocumentsSequence", [])
            for series in study.get("ReferencedSeriesSequence", [])
            for ref in series.get("ReferencedSOPSequence", [])
        ),
    )


def _int(value: object, default: int) -> int:
    try:
        return default if value is None or value == "" else int(str(value))
    except (TypeError, ValueError):
        return default
