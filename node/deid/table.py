"""PS3.15 Table E.1-1 compiled once into an ``int tag -> action`` dict per option set.

The JSON (``data/ps3.15-table-E.1-1.json``, see ``data/PROVENANCE.txt``) is parsed once per
process; :func:`compile_profile` resolves every row for a given option set and caches the result,
so the per-instance cost of a lookup is one dict access.

Resolution of a row
-------------------
1. Start from the Basic Profile action.
2. Apply the "clean" options' column (``C``), then the "retain" options' columns (``K``/``C``):
   a retained attribute is kept even if a clean option would also apply to it.
3. Resolve combined codes. PS3.15 says e.g. ``X/Z``: "X unless Z is required to maintain IOD
   conformance". Without an IOD module table per SOP class we use the table's own
   ``stdCompIOD`` column (whether the attribute is used by any standard composite IOD): if it
   is, keep the attribute present with the least revealing value (``X/Z``->Z, ``X/D``->D,
   ``X/Z/D``->Z, ``Z/D``->D, ``X/Z/U*``->keep the sequence with its UIDs replaced);
   otherwise remove it (or ``Z`` for ``Z/D``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from node.deid.options import Option, ProfileOptions

__all__ = [
    "ACTIONS",
    "CompiledProfile",
    "compile_profile",
    "table_rows",
]

ACTIONS = frozenset({"X", "Z", "D", "K", "C", "U"})
"""Resolved actions: remove, empty, dummy, keep (sequences: recurse), clean, replace UID."""

_CLEAN_FIRST = (Option.CLEAN_DESCRIPTORS, Option.CLEAN_STRUCTURED_CONTENT, Option.CLEAN_GRAPHICS)
_RETAIN_LAST = (
    Option.RETAIN_SAFE_PRIVATE,
    Option.RETAIN_UIDS,
    Option.RETAIN_DEVICE_IDENTITY,
    Option.RETAIN_INSTITUTION_IDENTITY,
    Option.RETAIN_PATIENT_CHARACTERISTICS,
    Option.RETAIN_LONG_FULL_DATES,
    Option.RETAIN_LONG_MODIFIED_DATES,
)

_PRIVATE_ID = "ggggeeee-where-gggg-is-odd"
_CURVE_ID = "50xxxxxx"
_OVERLAY_DATA_ID = "60xx3000"
_OVERLAY_COMMENTS_ID = "60xx4000"


@cache
def table_rows() -> tuple[dict[str, Any], ...]:
    """The raw Table E.1-1 rows (parsed once per process)."""
    text = resources.files("node.deid").joinpath("data/ps3.15-table-E.1-1.json").read_text("utf-8")
    rows = json.loads(text)
    if not isinstance(rows, list) or not rows:
        raise RuntimeError("node/deid/data/ps3.15-table-E.1-1.json is not a list of rows")
    return tuple(rows)


def _resolve_combined(code: str, in_std_iod: bool) -> str:
    if code in ACTIONS:
        return code
    combined = {
        "X/Z": "Z",
        "X/D": "D",
        "X/Z/D": "Z",
        "X/Z/U*": "K",  # keep the sequence; its nested UIDs have their own U rows
        "Z/D": "D",
    }
    if code not in combined:
        raise RuntimeError(f"Table E.1-1 has an action code this engine does not know: {code!r}")
    if in_std_iod:
        return combined[code]
    return "Z" if code == "Z/D" else "X"


def _row_action(row: dict[str, Any], options: ProfileOptions) -> str:
    code = str(row["basicProfile"])
    for opt in (*_CLEAN_FIRST, *_RETAIN_LAST):
        if opt in options and row.get(opt.column):
            code = str(row[opt.column])
    return _resolve_combined(code, row.get("stdCompIOD") == "Y")


@dataclass(frozen=True)
class CompiledProfile:
    """Every Table E.1-1 row resolved for one option set.

    ``actions`` covers the rows with an exact tag; the repeating-group and private rows are
    separate fields because they match by group pattern.
    """

    options: ProfileOptions
    actions: dict[int, str]
    private: str
    curve: str
    overlay_data: str
    overlay_comments: str

    def action_for(self, tag: int) -> str | None:
        """The action for an exact tag, or None when the table does not list it."""
        return self.actions.get(tag)


@cache
def compile_profile(options: ProfileOptions) -> CompiledProfile:
    """Resolve the whole table for ``options`` (cached: one compile per option set)."""
    actions: dict[int, str] = {}
    special: dict[str, str] = {}
    for row in table_rows():
        row_id = str(row["id"]).lower()
        action = _row_action(row, options)
        if row_id in (_PRIVATE_ID, _CURVE_ID, _OVERLAY_DATA_ID, _OVERLAY_COMMENTS_ID):
            special[row_id] = action
            continue
        actions[int(row_id, 16)] = action
    return CompiledProfile(
        options=options,
        actions=actions,
        private=special[_PRIVATE_ID],
        curve=special[_CURVE_ID],
        overlay_data=special[_OVERLAY_DATA_ID],
        overlay_comments=special[_OVERLAY_COMMENTS_ID],
    )
