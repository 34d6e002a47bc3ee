"""Burned-in PHI: which instances are suspect, and blanking per-device pixel regions.

Text burned into pixels (patient name on an ultrasound frame, a CT dose screen, a scanned form)
cannot be removed by editing attributes. The default is to block such instances from any
de-identified export. An admin who knows where a given device writes its text (same
manufacturer, model and matrix size => same layout) can configure masks; the listed rectangles
are then set to 0 in every frame and the instance is released with Burned In Annotation = NO and
the Clean Pixel Data Option code recorded.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from pydicom.dataset import Dataset
from pydicom.tag import Tag

__all__ = [
    "DEFAULT_SUSPECT_MODALITIES",
    "DEFAULT_SUSPECT_SOP_CLASSES",
    "BurnedInPolicy",
    "BurnedInRule",
    "DeviceMask",
    "apply_mask",
    "burned_in_reason",
]

DEFAULT_SUSPECT_MODALITIES = frozenset({"US", "XC", "ES", "GM", "SM", "OT", "DOC"})
DEFAULT_SUSPECT_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
        "1.2.840.10008.5.1.4.1.1.7.1",  # Multi-frame Single Bit SC
        "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte SC
        "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word SC
        "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color SC
        "1.2.840.10008.5.1.4.1.1.6.1",  # US Image
        "1.2.840.10008.5.1.4.1.1.6.2",  # Enhanced US Volume
        "1.2.840.10008.5.1.4.1.1.3.1",  # US Multi-frame Image
        "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
        "1.2.840.10008.5.1.4.1.1.104.2",  # Encapsulated CDA
    }
)
_DOSE_WORDS = ("DOSE", "SCREEN", "REPORT")

_BURNED_IN = Tag(0x0028, 0x0301)
_PIXEL_DATA = Tag(0x7FE0, 0x0010)


class BurnedInRule(StrEnum):
    """What to do with an instance that may carry burned-in text."""

    BLOCK = "block"
    """Never export it (default)."""
    MASK = "mask"
    """Blank the regions of a matching device mask; block if no mask matches."""
    ENCRYPTED_ONLY = "encrypted_only"
    """Keep the pixels as they are: for the inference path, whose pixels leave the node only
    CKKS-encrypted, so burned-in text is never readable outside the hospital. Not offered in the
    config for de-identified exports (``deid.burned_in.policy`` is block or mask)."""


@dataclass(frozen=True)
class DeviceMask:
    """Rectangles ``(x, y, width, height)`` to blank on images from one device layout."""

    manufacturer: str
    model: str
    rows: int
    columns: int
    regions: tuple[tuple[int, int, int, int], ...]

    def matches(self, ds: Dataset) -> bool:
        """Same manufacturer and model (case/space-insensitive) and the same matrix size."""
        return (
            _norm(ds.get("Manufacturer")) == _norm(self.manufacturer)
            and _norm(ds.get("ManufacturerModelName")) == _norm(self.model)
            and int(ds.get("Rows", 0) or 0) == self.rows
            and int(ds.get("Columns", 0) or 0) == self.columns
        )


@dataclass(frozen=True)
class BurnedInPolicy:
    """How suspect instances are found and handled."""

    rule: BurnedInRule = BurnedInRule.BLOCK
    masks: tuple[DeviceMask, ...] = ()
    suspect_modalities: frozenset[str] = DEFAULT_SUSPECT_MODALITIES
    suspect_sop_classes: frozenset[str] = DEFAULT_SUSPECT_SOP_CLASSES

    def mask_for(self, ds: Dataset) -> DeviceMask | None:
        """The first configured mask matching this instance's device, if masking is allowed."""
        if self.rule is not BurnedInRule.MASK:
            return None
        return next((m for m in self.masks if m.matches(ds)), None)


def _norm(value: object) -> str:
    return " ".join(str(value or "").split()).casefold()


def burned_in_reason(ds: Dataset, policy: BurnedInPolicy) -> str | None:
    """Why this instance may carry burned-in text (a short PHI-free code), or None.

    Instances without Pixel Data (SR, KOS, RT plans...) are never suspect here; their text is
    handled by the attribute profile.
    """
    if _PIXEL_DATA not in ds and "EncapsulatedDocument" not in ds:
        return None
    if str(ds.get(_BURNED_IN).value if _BURNED_IN in ds else "").strip().upper() == "YES":
        return "burned_in_annotation_yes"
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality in policy.suspect_modalities:
        return f"modality_{modality.lower()}"
    if str(ds.get("SOPClassUID", "") or "") in policy.suspect_sop_classes:
        return "sop_class_usually_burned_in"
    image_type = ds.get("ImageType")
    words: Iterable[str] = image_type if isinstance(image_type, Iterable) else ()
    if isinstance(image_type, str):
        words = [image_type]
    if any(any(w in str(v).upper() for w in _DOSE_WORDS) for v in words):
        return "dose_or_screen_capture"
    return None


def apply_mask(ds: Dataset, mask: DeviceMask) -> None:
    """Set the mask's rectangles to 0 in every frame and sample, in place.

    Uncompressed data is rewritten in its own layout; compressed data is decoded (pylibjpeg) and
    re-stored uncompressed as Explicit VR Little Endian, since re-encoding lossy data would lose
    more than the mask.
    """
    arr = ds.pixel_array.copy()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    row_axis = arr.ndim - 3 if samples > 1 else arr.ndim - 2
    for x, y, w, h in mask.regions:
        index: list[slice] = [slice(None)] * arr.ndim
        index[row_axis] = slice(y, y + h)
        index[row_axis + 1] = slice(x, x + w)
        arr[tuple(index)] = 0
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric.startswith("YBR") and ds.file_meta.TransferSyntaxUID.is_compressed:
        photometric = "RGB"  # pydicom converts decoded YBR JPEG data to RGB
    ds.set_pixel_data(
        arr, photometric, int(ds.get("BitsStored", arr.itemsize * 8)), generate_instance_uid=False
    )
    ds.BurnedInAnnotation = "NO"
