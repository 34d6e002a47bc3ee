"""Errors of multi-site validation (drawn in node/errors.py)."""

from __future__ import annotations

from node.errors import NodeError

__all__ = ["MultisiteError", "RoundRefusedError", "VectorError"]


class MultisiteError(NodeError):
    """A multi-site round, its federation or its ledger failed (exit 1)."""


class VectorError(MultisiteError, ValueError):
    """A contribution vector (or a sum of them) is malformed: wrong length, type or range."""


class RoundRefusedError(MultisiteError):
    """The coordinator refuses to release a result (too few sites or cases, a site's vector
    refused, a site dropped below the minimum); nothing partial is reported."""
