"""One mapping from exceptions to C-STORE statuses (scp.status.for_error), used by both paths.

The tree in scp/errors.py is what callers catch; ``for_error`` is the only place a status is
chosen from an exception, so our fast path and pynetdicom's path cannot answer differently.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

import scp
import scp._incoming
from scp import status
from scp._spool import PartialInstance
from scp.errors import (
    InvalidInstanceError,
    MalformedDatasetError,
    ProtocolError,
    ScpError,
    SendError,
    SpoolFullError,
)
from tests.scp.test_scp_fastpath import ct, server, spooled


def test_every_scp_error_descends_from_the_root() -> None:
    for cls in (InvalidInstanceError, MalformedDatasetError, ProtocolError, SendError):
        assert issubclass(cls, ScpError), cls
    assert issubclass(SpoolFullError, ScpError)
    assert issubclass(MalformedDatasetError, ValueError)  # as before the tree
    for name in scp.errors.__all__:
        assert name in scp.__all__, name


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (SpoolFullError("below the mark"), 0xA700),
        (OSError(errno.ENOSPC, "no space"), 0xA700),
        (OSError(errno.EIO, "i/o"), 0xC005),
        (PermissionError(errno.EACCES, "denied"), 0xC005),
        (MalformedDatasetError("truncated element header"), 0xC001),
        (InvalidInstanceError(status.MISSING_STUDY_UID, "no Study Instance UID"), 0xC002),
        (InvalidInstanceError(status.MISSING_SERIES_UID, "no Series Instance UID"), 0xC003),
        (InvalidInstanceError(status.MISSING_SOP_UID, "mismatch"), 0xC004),
        (RuntimeError("a bug"), 0xC000),
    ],
)
def test_for_error(exc: Exception, code: int) -> None:
    refusal = status.for_error(exc)
    assert refusal.status == code
    assert refusal.reason and "1.2." not in refusal.reason


def _one_store(tmp_path: Path, fast_path: bool) -> tuple[int, int]:
    """Send one CT through a server; return (status, instances left in the spool)."""
    with server(tmp_path / ("fast" if fast_path else "slow"), fast_path=fast_path) as srv:
        ae = AE(ae_title="SCU")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", srv.port, ae_title="BLINDREAD")
        assert assoc.is_established
        code = int(assoc.send_c_store(ct(1)[0]).Status)
        assoc.release()
        return code, len(spooled(srv)) + len(list((srv.spool.root / ".tmp").iterdir()))


@pytest.mark.parametrize(
    ("failure", "code"),
    [(OSError(errno.EIO, "i/o"), 0xC005), (RuntimeError("a bug"), 0xC000)],
)
def test_both_paths_answer_a_failed_store_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: Exception, code: int
) -> None:
    def failing_commit(self: PartialInstance, study: str, sop: str) -> None:
        raise failure

    monkeypatch.setattr(PartialInstance, "commit", failing_commit)
    assert _one_store(tmp_path, fast_path=True) == (code, 0)
    assert _one_store(tmp_path, fast_path=False) == (code, 0)


def test_both_paths_answer_a_validation_bug_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> tuple[str, str]:
        raise KeyError("a bug in validation")

    monkeypatch.setattr(scp._incoming, "validate", broken)
    assert _one_store(tmp_path, fast_path=True) == (0xC000, 0)
    assert _one_store(tmp_path, fast_path=False) == (0xC000, 0)
