"""Config section for de-identification (PS3.15 Annex E profile and options).

Example::

    deid:
      options: [clean_descriptors, retain_long_modified_dates]   # node-wide default
      profiles:                       # named option sets that routes refer to
        research: [clean_descriptors, clean_structured_content, retain_long_modified_dates]
      safe_private:                   # kept only with the retain_safe_private option
        - creator: "SIEMENS CT VA0  COAD"
          group: 0x0019
          elements: [0x92, 0x93]
      burned_in:
        policy: block                 # block | mask
        masks:
          - manufacturer: ACME
            model: Sono 5
            rows: 480
            columns: 640
            regions: [{x: 0, y: 0, width: 640, height: 40}]
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from node.config.base import FrozenModel
from node.deid.burned import (
    DEFAULT_SUSPECT_MODALITIES,
    BurnedInPolicy,
    BurnedInRule,
    DeviceMask,
)
from node.deid.options import KNOWN_NAMES, OptionError, ProfileOptions, parse_options
from node.deid.private import SafePrivateAllowList, SafePrivateTag

__all__ = [
    "BurnedInSection",
    "DeidSection",
    "MaskRegion",
    "PixelMaskSection",
    "SafePrivateEntry",
]


def _check_option(name: str) -> str:
    if name not in KNOWN_NAMES:
        raise ValueError(
            f"unknown de-identification option {name!r}; known: {', '.join(KNOWN_NAMES)}"
        )
    return name


OptionName = Annotated[str, AfterValidator(_check_option)]
"""A PS3.15 option in snake_case (``retain_uids``...)."""


def _check_options(value: tuple[str, ...]) -> tuple[str, ...]:
    try:
        parse_options(value)
    except OptionError as exc:
        raise ValueError(str(exc)) from None
    return value


OptionList = Annotated[tuple[OptionName, ...], AfterValidator(_check_options)]


class SafePrivateEntry(FrozenModel):
    """Private elements of one creator block considered free of identifying information."""

    creator: str = Field(min_length=1, max_length=64)
    group: int | None = Field(default=None, description="odd group; omit for any group")
    elements: tuple[Annotated[int, Field(ge=0, le=0xFF)], ...] = Field(min_length=1)

    @field_validator("group")
    @classmethod
    def _odd_group(cls, value: int | None) -> int | None:
        if value is not None and (value % 2 == 0 or not 0x0009 <= value <= 0xFFFF):
            raise ValueError("must be an odd (private) group number between 0x0009 and 0xFFFF")
        return value


class MaskRegion(FrozenModel):
    """A rectangle of pixels to blank, in image coordinates (0-based, top-left origin)."""

    x: int = Field(ge=0)
    y: int = Field(ge=0)
    width: int = Field(gt=0)
    height: int = Field(gt=0)


class PixelMaskSection(FrozenModel):
    """Where one device layout burns text in (matched by manufacturer, model, rows, columns)."""

    manufacturer: str = Field(min_length=1)
    model: str = Field(min_length=1)
    rows: int = Field(gt=0, le=65535)
    columns: int = Field(gt=0, le=65535)
    regions: tuple[MaskRegion, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _inside(self) -> PixelMaskSection:
        for i, r in enumerate(self.regions):
            if r.x + r.width > self.columns or r.y + r.height > self.rows:
                raise ValueError(
                    f"regions[{i}] ({r.x},{r.y},{r.width}x{r.height}) exceeds the "
                    f"{self.columns}x{self.rows} image"
                )
        return self

    def to_mask(self) -> DeviceMask:
        """The engine's form of this mask."""
        return DeviceMask(
            self.manufacturer,
            self.model,
            self.rows,
            self.columns,
            tuple((r.x, r.y, r.width, r.height) for r in self.regions),
        )


class BurnedInSection(FrozenModel):
    """Instances that may carry burned-in text: blocked, or released through device masks."""

    policy: Literal["block", "mask"] = "block"
    masks: tuple[PixelMaskSection, ...] = ()
    suspect_modalities: tuple[Annotated[str, Field(pattern=r"^[A-Z0-9_]{1,16}$")], ...] = tuple(
        sorted(DEFAULT_SUSPECT_MODALITIES)
    )

    def to_policy(self) -> BurnedInPolicy:
        """The engine's form of this section."""
        return BurnedInPolicy(
            rule=BurnedInRule(self.policy),
            masks=tuple(m.to_mask() for m in self.masks),
            suspect_modalities=frozenset(self.suspect_modalities),
        )


class DeidSection(FrozenModel):
    """Node-wide de-identification defaults; routes choose options per route."""

    options: OptionList = ()
    profiles: dict[str, OptionList] = {}
    safe_private: tuple[SafePrivateEntry, ...] = ()
    burned_in: BurnedInSection = BurnedInSection()
    vault_retention_days: int | None = Field(default=None, gt=0)

    def profile_options(self, profile: str | None = None) -> ProfileOptions:
        """The options of a named profile (a route's choice) or the node-wide default."""
        if profile is None:
            return parse_options(self.options)
        if profile not in self.profiles:
            known = ", ".join(sorted(self.profiles)) or "(none defined)"
            raise KeyError(f"unknown de-identification profile {profile!r}; known: {known}")
        return parse_options(self.profiles[profile])

    def allow_list(self) -> SafePrivateAllowList:
        """The safe-private allow-list keyed by private creator."""
        return SafePrivateAllowList(
            SafePrivateTag(e.creator, el, e.group) for e in self.safe_private for el in e.elements
        )
