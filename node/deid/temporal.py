"""Shifting DA/DT values by whole days and capping ages (PS3.5 VR formats).

Hand-written because pydicom's ``valuerep`` types reject the partial precision DT allows
(``YYYY``, ``YYYYMM``...) and would re-format values; here the original precision, the time part,
the fraction and the UTC offset of a DT are kept verbatim and only the date part moves.
"""

from __future__ import annotations

import datetime as _dt
import re

__all__ = ["cap_age", "shift_da", "shift_dt", "shift_multi"]

_DT_RE = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(.*)$")
_AGE_RE = re.compile(r"^(\d{3})([DWMY])$")
_DAYS_PER = {"D": 1.0, "W": 7.0, "M": 365.25 / 12, "Y": 365.25}


def _shift_date_parts(year: str, month: str | None, day: str | None, days: int) -> str:
    d = _dt.date(int(year), int(month or 1), int(day or 1)) + _dt.timedelta(days=days)
    out = f"{d.year:04d}"
    if month is not None:
        out += f"{d.month:02d}"
    if day is not None:
        out += f"{d.day:02d}"
    return out


def shift_da(value: str, days: int) -> str | None:
    """Shift one DA value (``YYYYMMDD``, legacy ``YYYY.MM.DD``, or a ``A-B`` range).

    Returns None when the value is not a date (the caller then removes it rather than keep it).
    """
    value = value.strip()
    if not value:
        return value
    if "-" in value:
        parts = [shift_da(p, days) if p else "" for p in value.split("-", 1)]
        return None if any(p is None for p in parts) else "-".join(p or "" for p in parts)
    compact = value.replace(".", "")
    if len(compact) != 8 or not compact.isdigit():
        return None
    try:
        return _shift_date_parts(compact[:4], compact[4:6], compact[6:8], days)
    except ValueError:
        return None


def shift_dt(value: str, days: int) -> str | None:
    """Shift one DT value; time, fraction and ``&ZZXX`` offset are kept as written."""
    value = value.strip()
    if not value:
        return value
    m = _DT_RE.match(value)
    if m is None:
        return None
    year, month, day, rest = m.groups()
    if day is not None and month is None:  # pragma: no cover - regex makes this impossible
        return None
    if rest and (month is None or day is None) and not rest.startswith(("+", "-")):
        return None
    try:
        return _shift_date_parts(year, month, day, days) + rest
    except ValueError:
        return None


def shift_multi(value: str, days: int, vr: str) -> str | None:
    """Shift every backslash-separated value of a DA or DT element."""
    fn = shift_da if vr == "DA" else shift_dt
    out = []
    for part in value.split("\\"):
        shifted = fn(part, days)
        if shifted is None:
            return None
        out.append(shifted)
    return "\\".join(out)


def cap_age(value: str) -> str:
    """Ages of 90 years or more become ``090Y`` (HIPAA Safe Harbor); others are kept."""
    m = _AGE_RE.match(value.strip())
    if m is None:
        return ""  # not a valid AS value: safer empty than passed through unchecked
    years = int(m.group(1)) * _DAYS_PER[m.group(2)] / 365.25
    return "090Y" if years >= 90 else value.strip()
