"""The PS3.15 Annex E profile options, their YAML/CLI names, table columns and CID 7050 codes.

Admins write readable snake_case names (``retain_uids``); the engine needs the Table E.1-1 column
each option overrides and the DCM code recorded in De-identification Method Code Sequence
(0012,0064). Keeping the three together here means they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from node.errors import NodeError

__all__ = [
    "BASIC_PROFILE_CODE",
    "CLEAN_PIXEL_DATA_CODE",
    "KNOWN_NAMES",
    "Option",
    "OptionError",
    "ProfileOptions",
    "parse_options",
]


class OptionError(NodeError, ValueError):
    """An option name is unknown or options contradict each other."""


@dataclass(frozen=True)
class _OptionInfo:
    column: str
    code: str
    meaning: str


class Option(Enum):
    """One Annex E option; ``value`` is the name used in YAML and on the command line."""

    RETAIN_SAFE_PRIVATE = "retain_safe_private"
    RETAIN_UIDS = "retain_uids"
    RETAIN_DEVICE_IDENTITY = "retain_device_identity"
    RETAIN_INSTITUTION_IDENTITY = "retain_institution_identity"
    RETAIN_PATIENT_CHARACTERISTICS = "retain_patient_characteristics"
    RETAIN_LONG_FULL_DATES = "retain_long_full_dates"
    RETAIN_LONG_MODIFIED_DATES = "retain_long_modified_dates"
    CLEAN_DESCRIPTORS = "clean_descriptors"
    CLEAN_STRUCTURED_CONTENT = "clean_structured_content"
    CLEAN_GRAPHICS = "clean_graphics"

    @property
    def column(self) -> str:
        """The Table E.1-1 column (innolitics key) this option overrides."""
        return _INFO[self].column

    @property
    def code(self) -> str:
        """The DCM code value of this option (CID 7050)."""
        return _INFO[self].code

    @property
    def meaning(self) -> str:
        """The DCM code meaning of this option (CID 7050)."""
        return _INFO[self].meaning


_INFO: dict[Option, _OptionInfo] = {
    Option.RETAIN_SAFE_PRIVATE: _OptionInfo(
        "rtnSafePrivOpt", "113111", "Retain Safe Private Option"
    ),
    Option.RETAIN_UIDS: _OptionInfo("rtnUIDsOpt", "113110", "Retain UIDs Option"),
    Option.RETAIN_DEVICE_IDENTITY: _OptionInfo(
        "rtnDevIdOpt", "113109", "Retain Device Identity Option"
    ),
    Option.RETAIN_INSTITUTION_IDENTITY: _OptionInfo(
        "rtnInstIdOpt", "113112", "Retain Institution Identity Option"
    ),
    Option.RETAIN_PATIENT_CHARACTERISTICS: _OptionInfo(
        "rtnPatCharsOpt", "113108", "Retain Patient Characteristics Option"
    ),
    Option.RETAIN_LONG_FULL_DATES: _OptionInfo(
        "rtnLongFullDatesOpt",
        "113106",
        "Retain Longitudinal Temporal Information Full Dates Option",
    ),
    Option.RETAIN_LONG_MODIFIED_DATES: _OptionInfo(
        "rtnLongModifDatesOpt",
        "113107",
        "Retain Longitudinal Temporal Information Modified Dates Option",
    ),
    Option.CLEAN_DESCRIPTORS: _OptionInfo("cleanDescOpt", "113105", "Clean Descriptors Option"),
    Option.CLEAN_STRUCTURED_CONTENT: _OptionInfo(
        "cleanStructContOpt", "113104", "Clean Structured Content Option"
    ),
    Option.CLEAN_GRAPHICS: _OptionInfo("cleanGraphOpt", "113103", "Clean Graphics Option"),
}

BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
CLEAN_PIXEL_DATA_CODE = ("113101", "Clean Pixel Data Option")

KNOWN_NAMES: tuple[str, ...] = tuple(o.value for o in Option)


@dataclass(frozen=True)
class ProfileOptions:
    """A validated, hashable set of options (the key of the compiled action table)."""

    options: frozenset[Option] = frozenset()

    def __contains__(self, item: object) -> bool:
        return item in self.options

    def names(self) -> tuple[str, ...]:
        """Option names in canonical (table column) order."""
        return tuple(o.value for o in Option if o in self.options)


def parse_options(names: Iterable[str]) -> ProfileOptions:
    """Validate option names; unknown names and contradictory pairs raise :class:`OptionError`.

    Full dates and modified dates are mutually exclusive in PS3.15 (one keeps, the other shifts).
    """
    chosen: set[Option] = set()
    for name in names:
        try:
            chosen.add(Option(name))
        except ValueError:
            raise OptionError(
                f"unknown de-identification option {name!r}; known: {', '.join(KNOWN_NAMES)}"
            ) from None
    if {Option.RETAIN_LONG_FULL_DATES, Option.RETAIN_LONG_MODIFIED_DATES} <= chosen:
        raise OptionError(
            "retain_long_full_dates and retain_long_modified_dates are mutually exclusive"
        )
    return ProfileOptions(frozenset(chosen))
