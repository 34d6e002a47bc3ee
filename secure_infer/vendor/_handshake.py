"""TLS handshake refusals at the vendor: one log line per address and reason, and a counter.

asyncio drops a failed server-side handshake silently (``ssl.SSLError`` is an ``OSError``, which
``SSLProtocol._fatal_error`` logs only in debug mode) and uvicorn never sees the connection, so a
hospital with an expired certificate, a scanner, or someone else's client would leave no trace.
The vendor therefore does the TLS layer itself: uvicorn gets a plain listening socket, and each
accepted connection is wrapped here in :class:`asyncio.sslproto.SSLProtocol` (the class the
loop would use) with a waiter future of ours; when the waiter fails the handshake failed, and
:class:`TlsRefusals` counts it (``blindread_vendor_tls_refused_total{reason}``) and logs the peer
address with a fixed reason: at most one line per (address, reason) per minute, the next line
saying how many were suppressed. Nothing else of the connection is logged (no certificate
subject: it is not needed to act, and a client certificate may carry anything).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from asyncio.sslproto import SSLProtocol
from collections.abc import Callable
from typing import Any

__all__ = ["REASONS", "TlsRefusals", "refusal_reason", "tls_protocol_factory"]

log = logging.getLogger("secure_infer.vendor.tls")

#: The fixed values of the ``reason`` label (and of the log line).
REASONS = (
    "no_certificate",
    "unknown_ca",
    "expired",
    "not_yet_valid",
    "bad_certificate",
    "protocol",
    "plain_http",
    "no_shared_cipher",
    "timeout",
    "closed",
    "other",
)

# X509_V_ERR_* verify codes (OpenSSL x509_vfy.h)
_VERIFY = {
    2: "unknown_ca",  # unable to get issuer certificate
    9: "not_yet_valid",
    10: "expired",
    18: "unknown_ca",  # self-signed certificate
    19: "unknown_ca",  # self-signed certificate in chain
    20: "unknown_ca",  # unable to get local issuer certificate
    21: "unknown_ca",  # unable to verify the first certificate
}
# OpenSSL reason strings (ssl.SSLError.reason)
_SSL_REASONS = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no_certificate",
    "CERTIFICATE_VERIFY_FAILED": "bad_certificate",
    "TLSV1_ALERT_UNKNOWN_CA": "unknown_ca",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "expired",
    "SSLV3_ALERT_BAD_CERTIFICATE": "bad_certificate",
    "UNSUPPORTED_PROTOCOL": "protocol",
    "WRONG_VERSION_NUMBER": "protocol",
    "VERSION_TOO_LOW": "protocol",
    "TLSV1_ALERT_PROTOCOL_VERSION": "protocol",
    "UNKNOWN_PROTOCOL": "protocol",
    "HTTP_REQUEST": "plain_http",
    "NO_SHARED_CIPHER": "no_shared_cipher",
    "NO_SUITABLE_SIGNATURE_ALGORITHM": "no_shared_cipher",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "no_shared_cipher",
}


def refusal_reason(exc: BaseException) -> tuple[str, str]:
    """``(reason label, short detail)`` of a failed handshake; the detail is OpenSSL's reason
    code or verify message (fixed strings, never certificate contents)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = int(getattr(exc, "verify_code", 0) or 0)
        detail = str(getattr(exc, "verify_message", "") or exc.reason or "verify failed")
        return _VERIFY.get(code, "bad_certificate"), detail
    if isinstance(exc, ssl.SSLError):
        code_s = str(exc.reason or "")
        return _SSL_REASONS.get(code_s, "other"), code_s or type(exc).__name__
    if isinstance(exc, ConnectionAbortedError):  # asyncio's handshake timeout
        return "timeout", "no handshake within the timeout"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, EOFError)):
        return "closed", "peer closed the connection during the handshake"
    return "other", type(exc).__name__


class TlsRefusals:
    """Counts failed handshakes by reason and logs them, rate-limited per (address, reason)."""

    def __init__(
        self,
        count: Callable[[str], None] | None = None,
        interval: float = 60.0,
        max_keys: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.count = count
        self.interval = interval
        self.max_keys = max_keys
        self.clock = clock
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}  # -> (last logged, suppressed)

    def refused(self, peer: Any, exc: BaseException) -> bool:
        """Record one refusal from ``peer`` (a socket address or None); returns whether it
        logged a line."""
        reason, detail = refusal_reason(exc)
        if self.count is not None:
            self.count(reason)
        ip = str(peer[0]) if isinstance(peer, (tuple, list)) and peer else "unknown"
        key = (ip, reason)
        now = self.clock()
        with self._lock:
            last, suppressed = self._seen.get(key, (float("-inf"), 0))
            if now - last < self.interval:
                self._seen[key] = (last, suppressed + 1)
                return False
            if key not in self._seen and len(self._seen) >= self.max_keys:
                # many addresses: forget the quiet ones rather than grow without bound
                self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.interval}
                if len(self._seen) >= self.max_keys:
                    key = ("*", reason)
                    last, suppressed = self._seen.get(key, (float("-inf"), 0))
                    if now - last < self.interval:
                        self._seen[key] = (last, suppressed + 1)
                        return False
            self._seen[key] = (now, 0)
        more = f" ({suppressed} more like it suppressed)" if suppressed else ""
        log.warning("TLS handshake from %s refused: %s (%s)%s", key[0], reason, detail, more)
        return True


def tls_protocol_factory(
    inner: Callable[..., asyncio.BaseProtocol],
    ssl_ctx: ssl.SSLContext,
    refusals: TlsRefusals,
    handshake_timeout: int | None = None,
) -> type[Any]:
    """A class uvicorn can take as its ``http`` protocol: each instance is the server side of a
    TLS connection whose application protocol is ``inner(**uvicorn's kwargs)``."""

    class _TlsServerProtocol(SSLProtocol):
        def __init__(
            self, *args: Any, _loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any
        ) -> None:
            loop = _loop or asyncio.get_running_loop()
            app = inner(*args, _loop=_loop, **kwargs)
            waiter = loop.create_future()
            waiter.add_done_callback(self._handshake_done)
            self._peer: Any = None
            super().__init__(
                loop,
                app,
                ssl_ctx,
                waiter,
                server_side=True,
                ssl_handshake_timeout=handshake_timeout,
            )

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self._peer = transport.get_extra_info("peername")
            super().connection_made(transport)

        def _handshake_done(self, fut: asyncio.Future[None]) -> None:
            if fut.cancelled():
                return
            exc = fut.exception()  # also marks it retrieved: no "never retrieved" warning
            if exc is not None:
                try:
                    refusals.refused(self._peer, exc)
                except Exception:  # never let logging break the loop
                    log.exception("could not record a TLS refusal")

    return _TlsServerProtocol
