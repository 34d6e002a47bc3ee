"""The node's logging set-up keeps element values that libraries quote out of the log (#16.3)."""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import pydicom
from pydicom.dataset import Dataset

from node.deid import Deidentifier
from node.logsetup import REDACTED, configure_logging, redact
from tests.node.test_deid_engine import KEYS, make_ct

BAD_UID = "1.2.3.abc"
LONG_UID = "1.2.840.99." + "7" * 70


def _bad_file() -> bytes:
    """A CT whose Series Instance UID has a letter and whose Study Instance UID is too long."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = make_ct()
        ds.SeriesInstanceUID = BAD_UID
        ds.StudyInstanceUID = LONG_UID
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@contextmanager
def node_logging() -> Iterator[io.StringIO]:
    """The node's logging configured as `blindread node run` does (its stderr handler writing
    into the returned buffer), undone afterwards. Entered inside the test body: pytest resets
    ``warnings`` between fixture set-up and the call."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    out = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        logging.captureWarnings(False)  # an earlier test's CLI run may have left it on
        configure_logging("INFO")
        handler = root.handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(out)
        try:
            yield out
        finally:
            logging.captureWarnings(False)
            root.handlers[:], _ = saved
            root.setLevel(saved[1])


def test_invalid_uid_warnings_reach_the_log_without_the_value() -> None:
    data = _bad_file()
    with node_logging() as node_log:
        src = pydicom.dcmread(io.BytesIO(data))
        # the SR (and any result) copies the original study's UIDs into a new dataset: pydicom
        # validates on assignment and warns, quoting the value
        result = Dataset()
        result.StudyInstanceUID = str(src.StudyInstanceUID)
        result.SeriesInstanceUID = str(src.SeriesInstanceUID)
        Deidentifier([], KEYS).deidentify(src)
    err = node_log.getvalue()
    assert "Invalid value for VR UI" in err  # that it happened, and the VR, stay
    assert "WARNING" in err
    assert BAD_UID not in err
    assert LONG_UID not in err and "7" * 20 not in err
    assert "py.warnings" in err  # Python warnings go through logging, redacted too


def test_redact_keeps_tags_and_vrs_and_drops_values() -> None:
    assert redact("Invalid value for VR UI: '1.2.3.abc'. See") == (
        f"Invalid value for VR UI: {REDACTED}. See"
    )
    out = redact("tag (0010,0010) VR PN value \"O'Brien\" b'\\x00P1' uid 1.2.840.113619.2.55")
    assert "(0010,0010)" in out and "PN" in out
    assert "Brien" not in out and "P1" not in out and "113619" not in out


def test_our_own_records_are_left_alone() -> None:
    with node_logging() as node_log:
        logging.getLogger("node.test").warning("unknown destination '%s'", "pacs")
    assert "unknown destination 'pacs'" in node_log.getvalue()
