"""Config section for vendor peers and the models the hospital uses through them."""

from __future__ import annotations

from node.config.base import FrozenModel

__all__ = ["VendorPeerSection"]


class VendorPeerSection(FrozenModel):
    """A vendor's secure_infer server as seen from the hospital."""

    url: str
    models: tuple[str, ...] = ()  # names of the models routes may use at this peer
