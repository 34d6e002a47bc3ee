"""Decrypted model outputs -> a TID 1500 Measurement Report in a Comprehensive 3D SR.

Built only from highdicom's typed template classes (strict when encoding), so the tree is
template-conformant by construction. Layout:

- Observation context: a *device* observer for the vendor algorithm (manufacturer, model name,
  ``<name> <version>`` as device name, and a public UID derived from name + version).
- One TID 1501 measurement group per study-level output label, referencing every analysed
  image; and one per (image-level label, image), referencing that image. Each group carries:
  a tracking identifier ``<label> (study)`` / ``<label> (image <n>)`` with a keyed tracking UID,
  the manifest's finding code as *Finding*, TID 4019 algorithm identification (name, version,
  manufacturer, the caller's parameters such as the CKKS parameter set, and the label's name,
  level and decision threshold), the probability as a TID 300 numeric measurement with UCUM unit
  ``1``, a qualitative evaluation ``<finding> = Present|Absent`` (Present when the probability is
  at or above the threshold), and ``Comment`` TEXT items (TID 1501 row 12, TEXT qualitative
  evaluation) saying that the result was computed under encryption and, when the manifest says
  so, that it is not for primary diagnosis. Free text has no slot at the TID 1500 level, and
  putting it on every group keeps it attached to each result a viewer may show on its own.
- Patient and study modules are copied from the original source datasets (highdicom's
  ``copy_patient_and_study_information``), so the SR lands in the original study; series and
  instance UIDs are keyed-deterministic (:mod:`node.sr.uids`) so a resend replaces the earlier SR.
- An SR amended for late images (more source images than an earlier SR of the same result) is a
  new document in the same series: new SOP Instance UID, Instance Number = revision, and every
  earlier revision in Predecessor Documents Sequence (:mod:`node.sr.revisions`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import highdicom as hd
from highdicom.sr import (
    AlgorithmIdentification,
    Comprehensive3DSR,
    DeviceObserverIdentifyingAttributes,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    RelationshipTypeValues,
    SourceImageForMeasurementGroup,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from node import __version__
from node.config.sr import SrSection
from node.sr import concepts as c
from node.sr.errors import SrError
from node.sr.limits import within_vr_limits
from node.sr.outputs import ResultOutputs, check_outputs
from node.sr.revisions import revision_of
from node.sr.uids import MIN_UID_KEY_BYTES, ResultUids, device_uid
from secure_infer import Manifest, OutputLabel

__all__ = [
    "BLINDREAD_MANUFACTURER",
    "AlgorithmParameters",
    "blindread_equipment",
    "build_result_sr",
    "complete_type2_patient_study",
    "order_sources",
]

log = logging.getLogger(__name__)

BLINDREAD_MANUFACTURER = "BlindRead"
_LO_MAX = 64

AlgorithmParameters = Mapping[str, object] | Sequence[str]
"""``{"he.scheme": "CKKS", "he.poly_modulus_degree": 16384}`` (written as ``key=value``) or
ready-made strings."""

_REQUIRED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


@dataclass(frozen=True)
class _Image:
    number: int  # 1-based position in the sorted list of analysed images
    ds: Dataset


def order_sources(source_datasets: Sequence[Dataset]) -> list[Dataset]:
    """Check the source datasets belong to one study and patient; dedupe and sort them.

    Sorting by (series number, series, instance number, SOP Instance UID) numbers the images as
    a reader would count them, and makes the SR content independent of the order files were
    read in, so a rebuilt SR is identical to the first.
    """
    if not source_datasets:
        raise SrError("source_datasets: no source image given")
    problems: list[str] = []
    unique: dict[str, Dataset] = {}
    for i, ds in enumerate(source_datasets):
        missing = [k for k in _REQUIRED if not str(ds.get(k, "") or "")]
        if missing:
            problems.append(f"source_datasets[{i}]: missing {', '.join(missing)}")
            continue
        if "Rows" not in ds:
            # e.g. an earlier result SR of the same study: only images can be analysed sources
            problems.append(f"source_datasets[{i}]: not an image (SOP Class {ds.SOPClassUID})")
            continue
        unique.setdefault(str(ds.SOPInstanceUID), ds)
    if problems:
        raise SrError(problems)
    datasets = list(unique.values())
    if len({str(ds.StudyInstanceUID) for ds in datasets}) != 1:
        raise SrError("source_datasets: images belong to more than one study")
    if len({str(ds.get("PatientID", "")) for ds in datasets}) != 1:
        raise SrError("source_datasets: images carry more than one Patient ID")
    return sorted(
        datasets,
        key=lambda d: (
            _int_or_zero(d, "SeriesNumber"),
            str(d.SeriesInstanceUID),
            _int_or_zero(d, "InstanceNumber"),
            str(d.SOPInstanceUID),
        ),
    )


def _int_or_zero(ds: Dataset, keyword: str) -> int:
    try:
        return int(ds.get(keyword) or 0)
    except (TypeError, ValueError):
        return 0


# Type 2 patient/study attributes highdicom reads from the first source: originals from a
# sloppy modality may lack them; an empty value is what the standard asks for then.
_TYPE2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def complete_type2_patient_study(ds: Dataset) -> Dataset:
    """A shallow copy of ``ds`` that a result object may copy patient/study attributes from.

    Values longer than their VR allows are truncated, or refused with :class:`SrError` for
    identifiers (:func:`node.sr.limits.within_vr_limits`); absent Type 2 patient/study
    attributes are present and empty. ``ds`` itself is not modified.
    """
    out = within_vr_limits(ds)
    for kw in _TYPE2_PATIENT_STUDY:
        if kw not in out:
            setattr(out, kw, "")
    return out


def _parameter_strings(params: AlgorithmParameters | None) -> list[str]:
    if params is None:
        return []
    if isinstance(params, Mapping):
        return [f"{k}={v}" for k, v in params.items()]
    return [str(p) for p in params]


def _algorithm(
    manifest: Manifest, label: OutputLabel, base_params: list[str]
) -> AlgorithmIdentification:
    params = [
        *base_params,
        f"output.label={label.name}",
        f"output.level={label.level}",
        f"output.threshold={label.threshold:g}",
    ]
    return AlgorithmIdentification(
        name=manifest.name,
        version=manifest.version,
        parameters=params,
        manufacturer=manifest.manufacturer,
    )


def _tracking_text(label: OutputLabel, image: _Image | None) -> str:
    text = f"{label.name} (study)" if image is None else f"{label.name} (image {image.number})"
    if len(text) > _LO_MAX:
        raise SrError(f"outputs.{label.name}: label name too long for a tracking identifier")
    return text


def _group(
    manifest: Manifest,
    label: OutputLabel,
    probability: float,
    images: Sequence[_Image],
    per_image: _Image | None,
    uids: ResultUids,
    base_params: list[str],
    encrypted: bool,
) -> MeasurementsAndQualitativeEvaluations:
    finding = c.finding_concept(label.finding.scheme, label.finding.value, label.finding.meaning)
    value = round(float(probability), 6)
    present = value >= label.threshold
    tracking = TrackingIdentifier(
        uid=uids.tracking(label.name, None if per_image is None else per_image.ds.SOPInstanceUID),
        identifier=_tracking_text(label, per_image),
    )
    refs = [
        SourceImageForMeasurementGroup.from_source_image(img.ds)
        for img in (images if per_image is None else [per_image])
    ]
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        finding_type=finding,
        algorithm_id=_algorithm(manifest, label, base_params),
        measurements=[Measurement(name=c.PROBABILITY, value=value, unit=c.UNIT_ONE)],
        qualitative_evaluations=[
            QualitativeEvaluation(name=finding, value=c.PRESENT if present else c.ABSENT)
        ],
        source_images=refs,
    )
    statements = [c.ENCRYPTION_STATEMENT if encrypted else c.NOT_ENCRYPTED_STATEMENT]
    if manifest.not_for_primary_diagnosis:
        statements.append(c.NOT_FOR_PRIMARY_DIAGNOSIS)
    for text in statements:
        group[0].ContentSequence.append(
            TextContentItem(
                name=c.COMMENT, value=text, relationship_type=RelationshipTypeValues.CONTAINS
            )
        )
    return group


def blindread_equipment(manifest: Manifest, encrypted: bool = True) -> hd.ContributingEquipment:
    """The Contributing Equipment item naming BlindRead, its version and what it did."""
    what = (
        "Decrypted result of two-party CKKS encrypted inference"
        if encrypted
        else "Result report of outputs supplied by hand (not computed under encryption)"
    )
    if manifest.not_for_primary_diagnosis:
        what += "; not for primary diagnosis"
    return hd.ContributingEquipment(
        manufacturer=BLINDREAD_MANUFACTURER,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name="BlindRead node",
        software_versions=__version__,
        contribution_description=f"{what} ({manifest.name} {manifest.version})",
    )


def build_result_sr(
    manifest: Manifest,
    outputs: ResultOutputs,
    source_datasets: Sequence[Dataset],
    *,
    uid_key: bytes,
    settings: SrSection | None = None,
    algorithm_parameters: AlgorithmParameters | None = None,
    earlier_results: Sequence[Dataset] = (),
    encrypted: bool = True,
) -> Comprehensive3DSR:
    """Build the result SR of ``manifest``'s model on the study of ``source_datasets``.

    Parameters
    ----------
    manifest
        The model's public manifest (labels, finding codes, thresholds, levels).
    outputs
        Decrypted probabilities: study-level per label, and per image (by SOP Instance UID).
    source_datasets
        The ORIGINAL (re-linked) datasets of the analysed images, headers suffice; patient and
        study information is copied from them.
    uid_key
        Secret key (>= 16 bytes) for the deterministic SR UIDs.
    settings
        Series number/description etc.; defaults to :class:`SrSection` defaults.
    algorithm_parameters
        Written into every group's algorithm identification, e.g. the CKKS parameter set.
    earlier_results
        Result objects already written back for this study (headers suffice): an earlier SR of
        the same study and model version that covers other images makes this SR its amendment
        (predecessor reference, next Instance Number); other objects are ignored.
    encrypted
        Whether ``outputs`` are the decrypted result of an encrypted run (the pipeline's job
        step). ``False`` (``blindread sr build`` on hand-fed outputs) writes that the result was
        NOT computed under encryption instead of the encryption statement.

    Raises
    ------
    SrError
        When the inputs cannot make a valid SR; the message holds no identifiers.
    """
    if len(uid_key) < MIN_UID_KEY_BYTES:
        raise SrError(f"uid_key: must be at least {MIN_UID_KEY_BYTES} bytes")
    settings = settings or SrSection()
    sources = order_sources(source_datasets)
    study_probs, image_probs = check_outputs(
        manifest, outputs, (str(d.SOPInstanceUID) for d in sources)
    )
    images = [_Image(i, ds) for i, ds in enumerate(sources, 1)]
    by_uid = {str(img.ds.SOPInstanceUID): img for img in images}
    uids = ResultUids(
        uid_key,
        str(sources[0].StudyInstanceUID),
        manifest.name,
        manifest.version,
        (str(d.SOPInstanceUID) for d in sources),
    )
    revision = revision_of(uids.sr_series, uids.sr_instance, earlier_results)
    base_params = _parameter_strings(algorithm_parameters)

    groups: list[MeasurementsAndQualitativeEvaluations] = []
    analysed = sorted((by_uid[u] for u in image_probs), key=lambda im: im.number)
    for label in manifest.outputs:
        try:
            if label.level == "study":
                prob = study_probs[label.name]
                groups.append(_group(
                    manifest, label, prob, images, None, uids, base_params, encrypted
                ))
                continue
            for img in analysed:
                prob = image_probs[str(img.ds.SOPInstanceUID)][label.name]
                groups.append(_group(
                    manifest, label, prob, images, img, uids, base_params, encrypted
                ))
        except (ValueError, TypeError) as exc:
            # highdicom's encoding checks on manifest values (code meaning > 64 chars, ...):
            # public model metadata, safe to quote
            raise SrError(f"manifest outputs.{label.name}: {exc}") from exc
    try:
        equipment = blindread_equipment(manifest, encrypted)
    except ValueError as exc:
        raise SrError(f"manifest: {exc}") from exc

    device = DeviceObserverIdentifyingAttributes(
        uid=device_uid(manifest.manufacturer, manifest.model_name, manifest.name, manifest.version),
        name=f"{manifest.name} {manifest.version}",
        manufacturer_name=manifest.manufacturer,
        model_name=manifest.model_name,
    )
    report = MeasurementReport(
        observation_context=ObservationContext(
            observer_device_context=ObserverContext(
                observer_type=codes.DCM.Device, observer_identifying_attributes=device
            )
        ),
        procedure_reported=c.PROCEDURE_REPORTED,
        imaging_measurements=groups,
        title=codes.cid7021.ImagingMeasurementReport,
    )
    try:
        sr = Comprehensive3DSR(
            evidence=[complete_type2_patient_study(sources[0]), *sources[1:]],
            content=report[0],
            series_instance_uid=uids.sr_series,
            series_number=settings.series_number,
            sop_instance_uid=uids.sr_instance,
            instance_number=revision.number,
            manufacturer=BLINDREAD_MANUFACTURER,
            manufacturer_model_name="BlindRead node",
            software_versions=__version__,
            series_description=settings.series_description,
            institution_name=settings.institution_name,
            is_complete=True,
            is_final=settings.final,
            contributing_equipment=[equipment],
            previous_versions=list(revision.predecessors) or None,
        )
    except (AttributeError, ValueError, TypeError) as exc:
        # highdicom's message may quote attribute values (names, IDs): keep it out of our
        # message and only chain it, for an admin's local debugging
        raise SrError(
            f"source_datasets: highdicom refused the patient/study attributes of the "
            f"originals ({type(exc).__name__})"
        ) from exc
    if revision.amended:
        sr.CompletionFlagDescription = (
            f"Revision {revision.number}: covers {len(sources)} image(s), "
            "supersedes the earlier revision(s)"
        )[:64]
    log.debug(
        "built result SR revision %d with %d measurement group(s)", revision.number, len(groups)
    )
    return sr
