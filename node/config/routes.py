"""Config section for routing rules."""

from __future__ import annotations

from typing import Any

from node.config.base import FrozenModel

__all__ = ["RouteSection"]


class RouteSection(FrozenModel):
    """One routing rule."""

    name: str
    match: dict[str, Any] = {}
    action: dict[str, Any] = {}
