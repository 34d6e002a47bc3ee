"""One C-STORE being received: its bytes go to the spool as they arrive, its status at the end.

Both receive paths use it (our fast path fragment by fragment, pynetdicom's path with the whole
data set at once), so what is checked, what is answered and what is logged is the same.
The rules, in order:

* spool already below ``min_free_bytes`` when the request starts, or crossing it while the
  data arrive: the rest is read and dropped, nothing stays in the spool, 0xA700;
* a write error: ``ENOSPC`` -> 0xA700, anything else -> 0xC005, nothing stays;
* the data set does not parse, or lacks a UID: 0xC001-0xC004 (:func:`validate`);
* an unexpected exception (a bug): 0xC000, nothing stays;
* otherwise fsync, rename into the study directory, 0x0000.

Which exception gets which status is decided by :func:`scp.status.for_error` alone.

Log lines name the calling AE title, the status and the reason; never a UID.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from durable_io import Bytes, nbytes
from scp import status
from scp._fastpath import StoreRequest
from scp._filemeta import file_meta_bytes
from scp._spool import PartialInstance, Spool
from scp._walk import walk_dataset
from scp.errors import InvalidInstanceError, MalformedDatasetError, SpoolFullError

__all__ = ["IncomingInstance", "validate"]

log = logging.getLogger(__name__)


def validate(
    dataset: bytes | bytearray | memoryview, transfer_syntax: str, affected_sop_uid: str
) -> tuple[str, str]:
    """Check the data set's encoding; return (study UID, SOP instance UID).

    Raises :class:`~scp.errors.MalformedDatasetError` if the bytes do not parse and
    :class:`~scp.errors.InvalidInstanceError` (with its status) if a UID is missing.
    """
    uids = walk_dataset(dataset, transfer_syntax)
    if not uids.study.strip():
        raise InvalidInstanceError(status.MISSING_STUDY_UID, "no Study Instance UID")
    if not uids.series.strip():
        raise InvalidInstanceError(status.MISSING_SERIES_UID, "no Series Instance UID")
    if not uids.sop_instance.strip() or uids.sop_instance != affected_sop_uid:
        raise InvalidInstanceError(status.MISSING_SOP_UID, "SOP Instance UID missing/mismatch")
    return uids.study, uids.sop_instance


class IncomingInstance:
    """Receives one instance into ``spool``; ``finish`` returns the status to answer."""

    def __init__(
        self,
        spool: Spool,
        request: StoreRequest,
        on_stored: Callable[[str], None] | None = None,
        on_refused: Callable[[int], None] | None = None,
    ) -> None:
        self.spool = spool
        self.request = request
        self.on_stored = on_stored
        self.on_refused = on_refused
        self._partial: PartialInstance | None = None
        self._meta_len = 0
        self._refusal: status.Refusal | None = None
        try:
            spool.check_space(0)
            meta = file_meta_bytes(
                request.sop_class_uid,
                request.sop_instance_uid,
                request.transfer_syntax_uid,
                request.calling_ae,
            )
            self._partial = spool.begin()
            self._partial.write(meta)
            self._meta_len = len(meta)
        except (SpoolFullError, OSError) as exc:
            self._refuse(exc)

    def write(self, data: Bytes) -> None:
        """Append received data set bytes (dropped once the instance is refused)."""
        if self._partial is None:
            return
        try:
            self.spool.check_space(nbytes(data))
            self._partial.write(data)
        except (SpoolFullError, OSError) as exc:
            self._refuse(exc)

    def finish(self) -> int:
        """Validate, commit durably, and return the DIMSE status (callbacks included)."""
        try:
            code = self._finish()
        except Exception as exc:  # a bug: answer it like any refusal, leave nothing behind
            log.exception("C-STORE from %s: handler failed", self.request.calling_ae)
            self.discard()
            code = status.for_error(exc).status
        if code != status.SUCCESS and self.on_refused is not None:
            try:
                self.on_refused(code)
            except Exception:
                log.exception("on_refused callback failed")
        return code

    def discard(self) -> None:
        """The association ended mid-message: drop what was received."""
        if self._partial is not None:
            self._partial.discard()
            self._partial = None

    # -- internals -------------------------------------------------------------------------
    def _refuse(self, exc: Exception) -> None:
        self.discard()
        self._refusal = status.for_error(exc)

    def _finish(self) -> int:
        calling = self.request.calling_ae
        partial = self._partial
        if partial is None or self._refusal is not None:
            code, reason = self._refusal or status.Refusal(
                status.SPOOL_WRITE_FAILED, "no spool file"
            )
            log.error("C-STORE from %s refused 0x%04X: %s", calling, code, reason)
            return code
        try:
            with partial.view(self._meta_len) as dataset:
                study, sop = validate(
                    dataset, self.request.transfer_syntax_uid, self.request.sop_instance_uid
                )
            stored = partial.commit(study, sop)
        except (InvalidInstanceError, MalformedDatasetError) as exc:
            code, reason = status.for_error(exc)
            log.warning(
                "C-STORE from %s refused 0x%04X: %s (%s)",
                calling,
                code,
                status.describe(code),
                reason,
            )
            return code
        except OSError as exc:
            code, reason = status.for_error(exc)
            log.error("C-STORE from %s refused 0x%04X: %s", calling, code, reason)
            return code
        finally:
            self.discard()  # after a commit there is nothing left to discard
        log.debug(
            "stored %s of study %s from %s%s",
            stored.path.name,
            stored.study_key,
            calling,
            " (replaced)" if stored.replaced else "",
        )
        if self.on_stored is not None:
            try:
                self.on_stored(stored.study_key)
            except Exception:  # the instance is safe; completion re-seeds from the spool
                log.exception("on_stored callback failed for study %s", stored.study_key)
        return status.SUCCESS
