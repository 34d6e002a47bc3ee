"""The SR builder's exception type.

Messages name the offending input by its position or label name, never by a raw UID, patient
name or ID, so they can be logged and shown on the command line as they are.
"""

from __future__ import annotations

from node.errors import NodeError

__all__ = ["SrError"]


class SrError(NodeError):
    """Inputs cannot make a valid result SR (missing output, foreign image, bad probability...).

    ``problems`` lists every problem found, one line each.
    """

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))
