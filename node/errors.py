"""The root of the ``node`` exception tree.

Every error the hospital application raises on purpose descends from :class:`NodeError`; the
CLI maps the tree to exit codes in one place (``node.cli``). The tree (kept in step with the
code by ``tests/node/test_errors.py``) is drawn here once the subpackages' errors hang under it.
"""

from __future__ import annotations

__all__ = ["NodeError"]


class NodeError(Exception):
    """Base class of every error raised on purpose by the ``node`` package.

    Messages name what is wrong and what to do, and never contain PHI (names, IDs, accession
    numbers, raw UIDs): studies appear only as keyed pseudonyms.
    """
