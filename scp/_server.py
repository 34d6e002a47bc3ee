"""Storage SCP: association policy, C-ECHO and C-STORE into the durable spool.

The C-STORE handler only validates and spools; it never waits on later processing. Any
exception inside it is turned into a failure status by our own ``try`` (pynetdicom would send
0xC211), so one bad dataset never stops the server.

C-STORE data arrives through :mod:`scp._fastpath` (our reader in pynetdicom's DUL thread) unless
``fast_path`` is off; both paths end in :meth:`StorageServer.store_instance`, so statuses,
validation (:mod:`scp._walk`) and durability are the same either way.

Connections are admitted by :mod:`scp._guard` at accept time (source network, per-address
limit, deadline for the A-ASSOCIATE-RQ) before pynetdicom gives them a thread and a slot.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, cast

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
from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from scp import status
from scp._fastpath import StoreRequest, install
from scp._guard import AcceptGuard, GuardedAssociationServer
from scp._incoming import IncomingInstance
from scp._net import tune_association
from scp._policy import REASON_LOCAL_LIMIT, REASON_NO_REASON, AssociationPolicy
from scp._settings import LogId, ScpSettings
from scp._spool import Spool
from scp._tls import server_context

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

MAX_ASSOCIATIONS = 32
"""Associations at once (pynetdicom answers one more with "local limit exceeded")."""


class StorageServer:
    """Our Storage SCP. ``on_stored(study_key)`` is called after each durable store."""

    def __init__(
        self,
        settings: ScpSettings,
        spool: Spool,
        log_id: LogId,
        on_stored: Callable[[str], None] | None = None,
        on_rejected: Callable[[int], None] | None = None,
        on_refused: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.log_id = log_id
        self.on_stored = on_stored
        # called with the A-ASSOCIATE-RJ reason code; also for connections closed at accept:
        # 0x01 (address not allowed), 0x02 (local limit: scp.max_associations_per_address)
        self.on_rejected = on_rejected
        self.on_refused = on_refused  # called with a C-STORE failure status
        self.policy = AssociationPolicy(
            settings.ae_title, settings.allowed_calling_ae_titles, settings.allowed_networks
        )
        self.ae = self._build_ae()
        self._server: GuardedAssociationServer | None = None
        self.accept_guard: AcceptGuard | None = None  # the last started server's

    def _build_ae(self) -> AE:
        # pynetdicom's default "standard" handlers format a debug summary of every PDU and
        # DIMSE message even when nobody logs at DEBUG; measurable at hundreds of instances/s.
        # Process-wide, and only affects pynetdicom's own debug output.
        _config.LOG_HANDLER_LEVEL = "none"
        s = self.settings
        ae = AE(ae_title=s.ae_title)
        ae.maximum_pdu_size = s.max_pdu
        ae.acse_timeout = s.acse_timeout
        ae.dimse_timeout = s.dimse_timeout
        ae.network_timeout = s.network_timeout
        ae.maximum_associations = MAX_ASSOCIATIONS
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
            (evt.EVT_CONN_OPEN, self._on_conn_open),
            (evt.EVT_CONN_CLOSE, self._on_conn_close),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
        ]
        guard = AcceptGuard(
            self.policy.address_allowed,
            self.settings.max_associations_per_address,
            self.settings.acse_timeout,
            on_network_refused=lambda: self._rejected(REASON_NO_REASON),
            on_limit_refused=lambda: self._rejected(REASON_LOCAL_LIMIT),
        )
        # ae.start_server(block=False) with our server class (same steps as pynetdicom 3.0's)
        server = cast(
            GuardedAssociationServer,
            self.ae.make_server(
                (self.settings.host, self.settings.port),
                evt_handlers=handlers,
                ssl_context=ssl_ctx,
                server_class=GuardedAssociationServer,
                guard=guard,
            ),
        )
        thread = threading.Thread(
            target=server.serve_forever, name="AcceptorServer@blindread", daemon=True
        )
        thread.start()
        self.ae._servers.append(server)
        self._server = server
        self.accept_guard = guard
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
    def _on_conn_open(self, event: Any) -> None:
        tune_association(event)
        if self.settings.fast_path:
            install(event.assoc, self.begin)

    def _on_conn_close(self, event: Any) -> None:
        reader = getattr(event.assoc, "_blindread_fast_reader", None)
        if reader is not None:
            reader.close()  # an instance cut off mid-message leaves nothing behind

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
        self._rejected(rej.diagnostic)
        assoc.acse.send_reject(rej.result, rej.source, rej.diagnostic)
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()

    def _rejected(self, reason_code: int) -> None:
        if self.on_rejected is not None:
            self.on_rejected(reason_code)

    def _on_echo(self, event: Any) -> int:
        return status.SUCCESS

    def _on_store(self, event: Any) -> int:
        """pynetdicom's C-STORE event (used when the fast path is off or not installed)."""
        try:
            rq = event.request
            request = StoreRequest(
                calling_ae=event.assoc.requestor.ae_title.strip(),
                sop_class_uid=str(rq.AffectedSOPClassUID),
                sop_instance_uid=str(rq.AffectedSOPInstanceUID),
                transfer_syntax_uid=str(event.context.transfer_syntax),
            )
            return self.store_instance(request, event.encoded_dataset(include_meta=False))
        except Exception as exc:  # the same answer the fast path's guard gives, not 0xC211
            code = status.for_error(exc).status
            log.exception("C-STORE handler failed; answering 0x%04X", code)
            return code

    def begin(self, request: StoreRequest) -> IncomingInstance:
        """Start receiving one instance (its data set bytes are written as they arrive)."""
        return IncomingInstance(self.spool, request, self.on_stored, self.on_refused)

    def store_instance(self, request: StoreRequest, dataset: bytes | bytearray) -> int:
        """Receive a whole data set at once; return the DIMSE status to answer."""
        incoming = self.begin(request)
        incoming.write(dataset)
        return incoming.finish()
