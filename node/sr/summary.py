"""An optional Secondary Capture image that shows the findings as rendered text.

For PACS viewers that do not render SR. The text holds only the model identity, the findings,
probabilities and thresholds, and image positions (series/instance numbers): no name, ID, date
or UID is drawn, so the image carries no PHI beyond what its own header (copied from the study,
like any object in that study) already has. Rendering uses Pillow's bundled scalable font, so no
system font is needed; the DICOM object is built by highdicom's ``SCImage``.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from node.config.sr import SrSection
from node.sr.builder import (
    BLINDREAD_MANUFACTURER,
    blindread_equipment,
    complete_type2_patient_study,
    order_sources,
)
from node.sr.errors import SrError
from node.sr.outputs import ResultOutputs, check_outputs
from node.sr.uids import MIN_UID_KEY_BYTES, ResultUids
from secure_infer import Manifest, OutputLabel

__all__ = ["build_summary_sc", "render_summary_lines", "summary_lines"]

_FONT_SIZE = 18
_LINE_HEIGHT = 26
_MARGIN = 24
_WIDTH = 1024


def _line(label: OutputLabel, prob: float) -> str:
    verdict = "PRESENT" if round(prob, 6) >= label.threshold else "absent"
    return f"{label.finding.meaning}: {verdict}  p={prob:.3f} (threshold {label.threshold:.2f})"


def summary_lines(
    manifest: Manifest,
    outputs: ResultOutputs,
    source_datasets: Sequence[Dataset],
    settings: SrSection | None = None,
    revision: int = 1,
    encrypted: bool = True,
) -> list[str]:
    """The text lines of the summary image (checked against the manifest like the SR)."""
    settings = settings or SrSection()
    sources = order_sources(source_datasets)
    study, images = check_outputs(manifest, outputs, (str(d.SOPInstanceUID) for d in sources))
    lines = ["BlindRead AI result"]
    if manifest.not_for_primary_diagnosis:
        lines[0] += " - NOT FOR PRIMARY DIAGNOSIS"
    lines += [
        f"Model: {manifest.manufacturer} {manifest.model_name}"
        f" ({manifest.name} {manifest.version})",
        "Computed under two-party CKKS homomorphic encryption."
        if encrypted
        else "NOT computed under encryption: outputs supplied by hand.",
    ]
    if revision > 1:
        lines.append(
            f"Revision {revision}: covers {len(sources)} image(s); replaces earlier summaries."
        )
    lines.append("")
    study_labels = [o for o in manifest.outputs if o.level == "study"]
    if study_labels:
        lines.append("Study:")
        lines += [f"  {_line(o, study[o.name])}" for o in study_labels]
    image_labels = [o for o in manifest.outputs if o.level == "image"]
    if image_labels:
        lines.append("Images:")
        for pos, ds in enumerate(sources, 1):
            probs = images.get(str(ds.SOPInstanceUID))
            if probs is None:
                continue
            where = f"image {pos} (series {ds.get('SeriesNumber', '?')}, "
            where += f"instance {ds.get('InstanceNumber', '?')})"
            lines += [f"  {where} {_line(o, probs[o.name])}" for o in image_labels]
    lines += [
        "",
        f"Unverified machine output. Structured report: series {settings.series_number}.",
    ]
    return lines


def render_summary_lines(lines: Sequence[str]) -> np.ndarray:
    """White text on black, 8-bit grey, one row of text per line."""
    font = ImageFont.load_default(size=_FONT_SIZE)
    height = max(256, 2 * _MARGIN + _LINE_HEIGHT * len(lines))
    img = Image.new("L", (_WIDTH, height), 0)
    draw = ImageDraw.Draw(img)
    for i, text in enumerate(lines):
        draw.text((_MARGIN, _MARGIN + i * _LINE_HEIGHT), text, fill=255, font=font)
    return np.asarray(img, dtype=np.uint8)


def build_summary_sc(
    manifest: Manifest,
    outputs: ResultOutputs,
    source_datasets: Sequence[Dataset],
    *,
    uid_key: bytes,
    settings: SrSection | None = None,
    revision: int = 1,
    encrypted: bool = True,
) -> hd.sc.SCImage:
    """The Secondary Capture summary of the same results as :func:`build_result_sr`.

    It joins the original study in its own series (``settings.sc_series_number``) with keyed
    deterministic UIDs, so a resend replaces it too. Like the SR, a summary of more images (an
    amended result) gets a new SOP Instance UID in the same series, and ``revision`` (the SR's
    Instance Number) as its Instance Number: the current summary is the one with the highest.
    """
    if len(uid_key) < MIN_UID_KEY_BYTES:
        raise SrError(f"uid_key: must be at least {MIN_UID_KEY_BYTES} bytes")
    settings = settings or SrSection()
    lines = summary_lines(manifest, outputs, source_datasets, settings, revision, encrypted)
    sources = order_sources(source_datasets)
    uids = ResultUids(
        uid_key,
        str(sources[0].StudyInstanceUID),
        manifest.name,
        manifest.version,
        (str(d.SOPInstanceUID) for d in sources),
    )
    pixels = render_summary_lines(lines)
    ref = complete_type2_patient_study(sources[0])  # values cut to their VR's length
    try:
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=ref,
            pixel_array=pixels,
            photometric_interpretation="MONOCHROME2",
            bits_allocated=8,
            coordinate_system="PATIENT",
            # a text page has no anatomical orientation; highdicom needs one for PATIENT and
            # the attribute is emptied below (Type 2C, empty = unknown)
            patient_orientation=("L", "F"),
            series_instance_uid=uids.sc_series,
            series_number=settings.sc_series_number,
            sop_instance_uid=uids.sc_instance,
            instance_number=revision,
            manufacturer=BLINDREAD_MANUFACTURER,
            series_description=settings.sc_series_description,
            contributing_equipment=[blindread_equipment(manifest, encrypted)],
            transfer_syntax_uid=ExplicitVRLittleEndian,
        )
    except (AttributeError, ValueError, TypeError) as exc:
        raise SrError(
            "source_datasets: highdicom refused the patient/study attributes of the "
            f"originals ({type(exc).__name__})"
        ) from exc
    sc.PatientOrientation = []  # empty: Type 2, unknown
    # General Series Laterality is required for paired body parts; the summary covers the
    # same body part as its sources, so say which (an unpaired one needs no laterality)
    body_part = ref.get("BodyPartExamined")
    if body_part:
        sc.BodyPartExamined = body_part
    else:
        sc.Laterality = ""  # Type 2C: empty means unknown
    sc.BurnedInAnnotation = "NO"  # the drawn text identifies neither patient nor date
    sc.ImageComments = " ".join(lines[:3]).strip()[:10240]
    return sc
