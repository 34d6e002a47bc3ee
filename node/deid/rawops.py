"""Reading and replacing still-undecoded (raw) element values without pydicom's conversion.

Why: decoding a ``RawDataElement`` into a ``DataElement`` (charset handling, value validation,
MultiValue construction) costs more than the whole de-identification decision. For the values the
profile rewrites (UIDs, dates, dummies, ASCII text) the bytes are simple: ASCII, backslash
separated, padded to even length. Working on them directly keeps the engine faster than
dicognito while doing more. Anything not plain ASCII (other character sets, ISO 2022 escapes)
goes back to pydicom's normal decoding path.
"""

from __future__ import annotations

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

__all__ = ["ascii_value", "fast_str", "with_value"]


def ascii_value(raw: RawDataElement) -> str | None:
    """The raw value as text when it is plain ASCII (no escape sequences), else None."""
    value = raw.value
    if value is None:
        return ""
    if isinstance(value, bytes) and value.isascii() and b"\x1b" not in value:
        return value.decode("ascii")
    return None


def with_value(raw: RawDataElement, text: str, pad: bytes = b" ") -> RawDataElement:
    """A copy of ``raw`` holding ASCII ``text`` padded to even length (UI pads with NUL)."""
    data = text.encode("ascii")
    if len(data) % 2:
        data += pad
    return raw._replace(value=data, length=len(data))


def fast_str(ds: Dataset, tag: int) -> str:
    """The stripped text of an element, decoding through pydicom only when needed."""
    elem = ds._dict.get(tag)  # type: ignore[call-overload]
    if elem is None:
        return ""
    if isinstance(elem, RawDataElement):
        text = ascii_value(elem)
        if text is not None:
            return text.strip(" \x00")
    value = ds[tag].value
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip(" \x00")
