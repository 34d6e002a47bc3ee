"""Config section for the Structured Reports (and optional summary images) we write back.

String limits are the DICOM VR limits of the attributes they end up in (LO = 64 characters), so
a too-long description is a start-up error instead of an invalid object at 3 a.m.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from node.config.base import FrozenModel

__all__ = ["SrSection"]

_NO_BACKSLASH = r"^[^\\\x00-\x1f]*$"


class SrSection(FrozenModel):
    """Defaults for result SRs; a route may override them."""

    series_number: int = Field(default=9901, ge=1, le=2**31 - 1)
    series_description: str = Field(
        default="BlindRead AI result (encrypted inference)", max_length=64, pattern=_NO_BACKSLASH
    )
    secondary_capture: bool = Field(
        default=False, description="also write a summary image for viewers that do not render SR"
    )
    sc_series_number: int = Field(default=9902, ge=1, le=2**31 - 1)
    sc_series_description: str = Field(
        default="BlindRead AI result summary", max_length=64, pattern=_NO_BACKSLASH
    )
    institution_name: str | None = Field(default=None, max_length=64, pattern=_NO_BACKSLASH)
    final: bool = Field(
        default=False,
        description="PreliminaryFlag FINAL instead of PRELIMINARY (unverified machine output)",
    )

    @model_validator(mode="after")
    def _distinct_series(self) -> SrSection:
        if self.secondary_capture and self.sc_series_number == self.series_number:
            raise ValueError("sc_series_number must differ from series_number")
        return self
