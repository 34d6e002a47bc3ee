"""Logging set-up for the CLI: one line per record on stderr (journald adds the timestamp)."""

from __future__ import annotations

import logging
import sys

__all__ = ["configure_logging"]


def configure_logging(level: str = "INFO") -> None:
    """Send ``logging`` records to stderr at ``level``; quiet pynetdicom's per-PDU chatter."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, root.level))
