"""Logging set-up for the CLI: one line per record on stderr (journald adds the timestamp).

Third-party libraries quote element values in their warnings (pydicom's ``Invalid value for VR
UI: '1.2.3.abc'``, pynetdicom's dataset dumps): :class:`RedactValues` rewrites every record of
those loggers so that the warning, its tag and its VR stay but no value reaches the log. Python
``warnings`` (pydicom sends each validation message both to its logger and to ``warnings``) are
routed through ``logging`` (``py.warnings``) and redacted the same way, instead of being printed
raw on stderr.
"""

from __future__ import annotations

import logging
import re
import sys

__all__ = ["REDACTED", "RedactValues", "configure_logging", "quiet_loggers", "redact"]


def configure_logging(level: str = "INFO") -> None:
    """Send ``logging`` records to stderr at ``level``; quiet pynetdicom's per-PDU chatter;
    route ``warnings`` through logging; redact values quoted by third-party libraries."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactValues())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)
    quiet_loggers()


# Libraries whose INFO/DEBUG lines can carry raw UIDs or dataset contents (highdicom logs the
# UID of every dataset it copies modules from; pynetdicom can dump whole datasets at DEBUG).
_NOISY = ("pynetdicom", "highdicom", "httpx", "httpcore")


def quiet_loggers() -> None:
    """Keep third-party loggers that may print identifiers at WARNING or above."""
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)


REDACTED = "<value>"
"""What stands in the log where a library quoted an element value."""

# Loggers whose messages may quote element values; ``py.warnings`` carries ``warnings.warn``.
_REDACT_LOGGERS = ("pydicom", "pynetdicom", "highdicom", "py.warnings")

# A Python repr of a str or bytes value: '...', "...", b'...' (with backslash escapes).
_QUOTED = re.compile(r"b?'(?:[^'\\\n]|\\.)*'" + r'|b?"(?:[^"\\\n]|\\.)*"')
# A UID-like or long number run that survived unquoted (e.g. "UID 1.2.840.113619.2.55").
_UIDISH = re.compile(r"(?<![\w(,])\d+(?:\.\d+){2,}\.?\w*")
# The source line `warnings` appends after "file:line: Category: message\n"
_SOURCE_LINE = re.compile(r"\n\s+.*$", re.DOTALL)


def redact(message: str) -> str:
    """``message`` without any quoted value or UID-like number (tags such as ``(0008,0018)``
    and VR names stay)."""
    message = _SOURCE_LINE.sub("", message)
    message = _QUOTED.sub(REDACTED, message)
    return _UIDISH.sub(REDACTED, message)


class RedactValues(logging.Filter):
    """Rewrites records of value-quoting libraries (see :data:`_REDACT_LOGGERS`) in place."""

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        if any(name == p or name.startswith(p + ".") for p in _REDACT_LOGGERS):
            try:
                text = record.getMessage()
            except Exception:  # a broken format string: keep only that something happened
                text = str(record.msg)
            record.msg = redact(text)
            record.args = None
            if record.exc_info is not None or record.exc_text:
                # a library's traceback may quote a value too; keep the exception type only
                exc = record.exc_info[1] if record.exc_info else None
                if exc is not None:
                    record.msg += f" ({type(exc).__name__})"
                record.exc_info = None
                record.exc_text = None
        return True
