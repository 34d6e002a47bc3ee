"""Storage SCP: association policy, C-ECHO and C-STORE into the durable spool.

The C-STORE handler only validates and spools; it never waits on later processing. Any
exception inside it is turned into a failure status by our own ``try`` (pynetdicom would send
0xC211), so one bad dataset never stops the server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from scp import status
from scp.errors import InvalidInstanceError, SpoolFullError
from scp.net import tune_association
from scp.policy import AssociationPolicy
from scp.settings import LogId, ScpSettings
from scp.spool import Spool
from scp.tls import server_context

__all__ = ["ACCEPTED_TRANSFER_SYNTAXES", "StorageServer"]

log = logging.getLogger(__name__)

ACCEPTED_TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
    RLELossless,
]
"""Stored as sent, never transcoded."""


def validate(data: bytes, affected_sop_uid: str) -> tuple[str, str, str]:
    """Parse the DICOM file bytes; return (study, series, SOP instance UID) or raise.

    Parsing the whole dataset (pixel data as raw bytes, not decompressed) catches truncated or
    garbled encodings before they reach the spool.
    """
    try:
        ds = dcmread(BytesIO(data))
        study = str(ds.get("StudyInstanceUID", "") or "")
        series = str(ds.get("SeriesInstanceUID", "") or "")
        sop = str(ds.get("SOPInstanceUID", "") or "")
    except (InvalidDicomError, EOFError, ValueError, TypeError, KeyError, OSError) as exc:
        raise InvalidInstanceError(status.CANNOT_DECODE, type(exc).__name__) from None
    except Exception as exc:  # pydicom raises many types on garbage
        raise InvalidInstanceError(status.CANNOT_DECODE, type(exc).__name__) from None
    if not study.strip():
        raise InvalidInstanceError(status.MISSING_STUDY_UID, "no Study Instance UID")
    if not series.strip():
        raise InvalidInstanceError(status.MISSING_SERIES_UID, "no Series Instance UID")
    if not sop.strip() or sop != affected_sop_uid:
        raise InvalidInstanceError(status.MISSING_SOP_UID, "SOP Instance UID missing/mismatch")
    return study, series, sop


class StorageServer:
    """Our Storage SCP. ``on_stored(study_key)`` is called after each durable store."""

    def __init__(
        self,
        settings: ScpSettings,
        spool: Spool,
        log_id: LogId,
        on_stored: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.log_id = log_id
        self.on_stored = on_stored
        self.policy = AssociationPolicy(
            settings.ae_title, settings.allowed_calling_ae_titles, settings.allowed_networks
        )
        self.ae = self._build_ae()
        self._server: ThreadedAssociationServer | None = None

    def _build_ae(self) -> AE:
        s = self.settings
        ae = AE(ae_title=s.ae_title)
        ae.maximum_pdu_size = s.max_pdu
        ae.acse_timeout = s.acse_timeout
        ae.dimse_timeout = s.dimse_timeout
        ae.network_timeout = s.network_timeout
        ae.maximum_associations = 32
        for cx in AllStoragePresentationContexts:
            if cx.abstract_syntax is not None:
                ae.add_supported_context(cx.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        return ae

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        if self._server is None:
            return self.settings.port
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Listen in background threads."""
        ssl_ctx = server_context(self.settings.tls) if self.settings.tls else None
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, tune_association),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
        ]
        self._server = self.ae.start_server(
            (self.settings.host, self.settings.port),
            block=False,
            evt_handlers=handlers,
            ssl_context=ssl_ctx,
        )
        log.info(
            "storage SCP %s listening on %s:%d%s",
            self.settings.ae_title,
            self.settings.host,
            self.port,
            " (TLS)" if ssl_ctx else "",
        )

    def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, let running associations finish for ``grace`` s, abort the rest.

        Every instance already answered 0x0000 is durable, so aborting loses nothing acknowledged.
        """
        import time

        if self._server is None:
            return
        server, self._server = self._server, None
        server.shutdown()
        deadline = time.monotonic() + grace
        while self.ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        for assoc in self.ae.active_associations:
            assoc.abort()
        log.info("storage SCP stopped")

    # -- handlers ----------------------------------------------------------------------
    def _on_requested(self, event: Any) -> None:
        assoc = event.assoc
        rq = assoc.requestor.primitive
        calling = (rq.calling_ae_title or "").strip()
        called = (rq.called_ae_title or "").strip()
        ip = str(assoc.requestor.address)
        rej = self.policy.check(calling, called, ip)
        if rej is None:
            log.info("association from %s@%s accepted", calling, ip)
            return
        log.warning(
            "association from %s@%s rejected: %s (result=%d source=%d reason=%d)",
            calling,
            ip,
            rej.reason,
            rej.result,
            rej.source,
            rej.diagnostic,
        )
        assoc.acse.send_reject(rej.result, rej.source, rej.diagnostic)
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()

    def _on_echo(self, event: Any) -> int:
        return status.SUCCESS

    def _on_store(self, event: Any) -> int:
        calling = event.assoc.requestor.ae_title.strip()
        try:
            data = event.encoded_dataset(include_meta=True)
            self.spool.check_space(len(data))
            study, _series, sop = validate(data, str(event.request.AffectedSOPInstanceUID))
            stored = self.spool.store(study, sop, data)
        except SpoolFullError:
            log.error("C-STORE from %s refused 0xA700: spool below free-space mark", calling)
            return status.OUT_OF_RESOURCES
        except InvalidInstanceError as exc:
            log.warning(
                "C-STORE from %s refused 0x%04X: %s (%s)",
                calling,
                exc.status,
                status.describe(exc.status),
                exc.reason,
            )
            return exc.status
        except OSError as exc:
            log.error("C-STORE from %s failed 0xC005: spool write error %s", calling, exc.errno)
            return status.SPOOL_WRITE_FAILED
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
