"""Burned-in PHI: which instances are suspect, and blanking per-device pixel regions.

Text burned into pixels (patient name on an ultrasound frame, a CT dose screen, a scanned form)
cannot be removed by editing attributes. The default is to block such instances from any
de-identified export. An admin who knows where a given device writes its text (same
manufacturer, model and matrix size => same layout) can configure masks; the listed rectangles
are then set to 0 in every frame and the instance is released with Burned In Annotation = NO and
the Clean Pixel Data Option code recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from node.deid.rawops import fast_str

__all__ = [
    "DEFAULT_SUSPECT_MODALITIES",
    "DEFAULT_SUSPECT_SOP_CLASSES",
    "BurnedInPolicy",
    "BurnedInRule",
    "DeviceMask",
    "apply_mask",
    "burned_in_reason",
    "mask_overlay",
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

_BURNED_IN = 0x00280301
_PIXEL_DATA = 0x7FE00010
_ENCAPSULATED_DOC = 0x00420011
_MODALITY = 0x00080060
_SOP_CLASS = 0x00080016
_IMAGE_TYPE = 0x00080008


class BurnedInRule(StrEnum):
    """What to do with an instance that may carry burned-in text."""

    BLOCK = "block"
    """Never export it (default)."""
    MASK = "mask"
    """Blank the regions of a matching device mask; block if no mask matches."""
    ALLOW = "allow"
    """Do not check (API only, not offered in YAML): for a pipeline whose pixels never leave
    the node in the clear, e.g. encrypted inference, where identity is re-linked anyway."""


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
    if policy.rule is BurnedInRule.ALLOW:
        return None
    if _PIXEL_DATA not in ds._dict and _ENCAPSULATED_DOC not in ds._dict:
        return None
    if fast_str(ds, _BURNED_IN).upper() == "YES":
        return "burned_in_annotation_yes"
    modality = fast_str(ds, _MODALITY).upper()
    if modality in policy.suspect_modalities:
        return f"modality_{modality.lower()}"
    if fast_str(ds, _SOP_CLASS) in policy.suspect_sop_classes:
        return "sop_class_usually_burned_in"
    image_type = fast_str(ds, _IMAGE_TYPE).upper()
    if any(w in image_type for w in _DOSE_WORDS):
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


def mask_overlay(ds: Dataset, group: int, mask: DeviceMask) -> None:
    """Blank the mask's rectangles in a packed 1-bit overlay plane (PS3.3 C.9.2)."""
    rows = int(ds.get(Tag(group, 0x0010)).value)
    cols = int(ds.get(Tag(group, 0x0011)).value)
    frames = int(ds[Tag(group, 0x0015)].value) if Tag(group, 0x0015) in ds else 1
    origin = ds[Tag(group, 0x0050)].value if Tag(group, 0x0050) in ds else [1, 1]
    r0, c0 = int(origin[0]) - 1, int(origin[1]) - 1
    elem = ds[Tag(group, 0x3000)]
    n = rows * cols * frames
    bits = np.unpackbits(np.frombuffer(elem.value, dtype=np.uint8), bitorder="little")[:n]
    plane = bits.reshape(frames, rows, cols).copy()
    for x, y, w, h in mask.regions:
        ys, xs = max(0, y - r0), max(0, x - c0)
        plane[:, ys : max(0, y + h - r0), xs : max(0, x + w - c0)] = 0
    packed = np.packbits(plane.reshape(-1), bitorder="little").tobytes()
    if len(packed) % 2:
        packed += b"\x00"
    elem.value = packed
