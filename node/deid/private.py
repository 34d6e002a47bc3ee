"""The safe-private allow-list: private attributes kept under the Retain Safe Private option.

A private element is identified by its private creator string, its group and the low byte of its
element number (``(0029,xx08)`` in the block reserved by ``SIEMENS CSA HEADER``), never by the
raw tag: the block byte ``xx`` is assigned per instance by whoever wrote it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["SafePrivateAllowList", "SafePrivateTag"]


@dataclass(frozen=True)
class SafePrivateTag:
    """One allowed private element; ``group`` None means any odd group."""

    creator: str
    element: int
    group: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.element <= 0xFF:
            raise ValueError("element must be the low byte (0x00-0xFF) within the creator block")
        if self.group is not None and (self.group % 2 == 0 or not 0x0009 <= self.group <= 0xFFFF):
            raise ValueError("group must be an odd group number (private groups are odd)")


class SafePrivateAllowList:
    """Fast membership test ``(creator, group, element low byte)``."""

    def __init__(self, entries: Iterable[SafePrivateTag] = ()) -> None:
        self._exact: set[tuple[str, int, int]] = set()
        self._any_group: set[tuple[str, int]] = set()
        for e in entries:
            creator = _norm(e.creator)
            if e.group is None:
                self._any_group.add((creator, e.element))
            else:
                self._exact.add((creator, e.group, e.element))

    def __bool__(self) -> bool:
        return bool(self._exact or self._any_group)

    def allows(self, creator: str, group: int, element_low: int) -> bool:
        """Whether the element at ``element_low`` of ``creator``'s block in ``group`` is safe."""
        c = _norm(creator)
        return (c, group, element_low) in self._exact or (c, element_low) in self._any_group


def _norm(creator: str) -> str:
    return creator.strip(" \x00").upper()
