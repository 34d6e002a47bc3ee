"""Config section for de-identification (PS3.15 Annex E profile and options)."""

from __future__ import annotations

from node.config.base import FrozenModel

__all__ = ["DeidSection"]


class DeidSection(FrozenModel):
    """Node-wide de-identification defaults; routes choose options per route."""

    options: tuple[str, ...] = ()
