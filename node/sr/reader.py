"""Read a BlindRead result SR back into plain findings (for ``blindread sr show`` and tests).

Tolerant when decoding (highdicom's motto): the SR is parsed with highdicom's TID 1500 classes,
and each measurement group is read for what it carries; a group missing an optional part gives
``None`` there instead of failing the whole report.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from highdicom.sr import (
    CodedConcept,
    Comprehensive3DSR,
    DeviceObserverIdentifyingAttributes,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ValueTypeValues,
)
from highdicom.sr.utils import find_content_items
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import UID

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

    @property
    def study_findings(self) -> tuple[ResultFinding, ...]:
        return tuple(f for f in self.findings if f.level == "study")

    @property
    def image_findings(self) -> tuple[ResultFinding, ...]:
        return tuple(f for f in self.findings if f.level == "image")


def _texts(group: Dataset, name: CodedConcept) -> list[str]:
    return [
        str(item.value)
        for item in find_content_items(group, name=name, value_type=ValueTypeValues.TEXT)
    ]


def _read_group(group: MeasurementsAndQualitativeEvaluations) -> ResultFinding:
    root = group[0]
    ftype = group.finding_type
    finding = (
        (ftype.scheme_designator, ftype.value, ftype.meaning) if ftype is not None else ("", "", "")
    )
    present: bool | None = None
    for qe in group.get_qualitative_evaluations():
        if ftype is not None and qe.name == ftype:
            if qe.value == c.PRESENT:
                present = True
            elif qe.value == c.ABSENT:
                present = False
    probability: float | None = None
    for m in group.get_measurements(name=c.PROBABILITY):
        probability = float(m.value)
    params: dict[str, str] = {}
    for text in _texts(root, _ALG_PARAMS):
        key, sep, value = text.partition("=")
        params[key if sep else text] = value if sep else ""
    names, versions = _texts(root, _ALG_NAME), _texts(root, _ALG_VERSION)
    threshold: float | None
    try:
        threshold = float(params["output.threshold"])
    except (KeyError, ValueError):
        threshold = None
    sources = tuple(str(img.referenced_sop_instance_uid) for img in group.source_images)
    uid = group.tracking_uid
    return ResultFinding(
        label=params.get("output.label"),
        level=params.get("output.level"),
        finding=finding,
        present=present,
        probability=probability,
        threshold=threshold,
        tracking_identifier=group.tracking_identifier,
        tracking_uid=None if uid is None else str(uid),
        source_sop_instance_uids=sources,
        algorithm_name=names[0] if names else None,
        algorithm_version=versions[0] if versions else None,
        algorithm_parameters=params,
        comments=tuple(_texts(root, c.COMMENT)),
    )


def read_result_sr(ds: Dataset) -> ResultReport:
    """Parse a result SR (as written by :func:`node.sr.build_result_sr`).

    Raises
    ------
    SrError
        When ``ds`` is not a Comprehensive 3D SR holding a TID 1500 Measurement Report.
    """
    if str(ds.get("SOPClassUID", "")) != _COMPREHENSIVE_3D_SR:
        raise SrError("not a Comprehensive 3D SR document")
    try:
        sr = Comprehensive3DSR.from_dataset(ds)
    except (AttributeError, ValueError, TypeError) as exc:
        raise SrError(f"not a readable SR document ({type(exc).__name__})") from exc
    content = sr.content
    if not isinstance(content, MeasurementReport):
        raise SrError("SR does not hold a TID 1500 Measurement Report")

    device_uid = name = manufacturer = model = None
    for ctx in content.get_observer_contexts(observer_type=codes.DCM.Device):
        attrs = ctx.observer_identifying_attributes
        if not isinstance(attrs, DeviceObserverIdentifyingAttributes):
            continue
        device_uid = str(UID(attrs.uid))
        name, manufacturer, model = attrs.name, attrs.manufacturer_name, attrs.model_name
        break
    findings = tuple(_read_group(g) for g in content.get_image_measurement_groups())
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
        device_uid=device_uid,
        device_name=name,
        device_manufacturer=manufacturer,
        device_model_name=model,
        findings=findings,
        contributing_equipment=equipment,
    )
