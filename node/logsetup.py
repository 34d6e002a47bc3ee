"""Logging set-up for the CLI: one line per record on stderr (journald adds the timestamp)."""

from __future__ import annotations

import logging
import sys

__all__ = ["configure_logging", "quiet_loggers"]


def configure_logging(level: str = "INFO") -> None:
    """Send ``logging`` records to stderr at ``level``; quiet pynetdicom's per-PDU chatter."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    quiet_loggers()


# Libraries whose INFO/DEBUG lines can carry raw UIDs or dataset contents (highdicom logs the
# UID of every dataset it copies modules from; pynetdicom can dump whole datasets at DEBUG).
_NOISY = ("pynetdicom", "highdicom", "httpx", "httpcore")


def quiet_loggers() -> None:
    """Keep third-party loggers that may print identifiers at WARNING or above."""
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
