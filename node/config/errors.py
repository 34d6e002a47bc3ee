"""The config error type and how pydantic's errors become admin-readable lines.

Each line names the YAML path and what was expected, e.g.
``scp.port: must be <= 65535, got 70000`` or ``routes[2].action: unknown key 'modle'``; the
formatting is secure_infer's (:func:`format_validation_error`), shared with the vendor's config.
"""

from __future__ import annotations

from collections.abc import Sequence

from node.errors import NodeError
from secure_infer import format_loc, format_validation_error

__all__ = ["ConfigError", "format_loc", "format_validation_error"]


class ConfigError(NodeError):
    """A config file is missing, unreadable, not YAML, or not valid.

    ``problems`` lists every problem found (not only the first), one line each.
    """

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        joined = "\n  ".join(self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s):\n  {joined}")
