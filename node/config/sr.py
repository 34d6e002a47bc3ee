"""Config section for the Structured Reports we write back."""

from __future__ import annotations

from pydantic import Field

from node.config.base import FrozenModel

__all__ = ["SrSection"]


class SrSection(FrozenModel):
    """Defaults for result SRs; a route may override them."""

    series_number: int = Field(default=9901, ge=1)
    series_description: str = "BlindRead AI result (encrypted inference)"
    secondary_capture: bool = False
