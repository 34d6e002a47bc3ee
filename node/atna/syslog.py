"""RFC 5424 syslog messages sent over UDP (RFC 5426), TCP (RFC 6587 octet counting) or TLS
(RFC 5425, octet counting over TLS).

Hand-written: Python's ``logging.handlers.SysLogHandler`` writes the old BSD format (RFC 3164)
and frames TCP with a trailing NUL or newline, which an XML message may contain; ATNA
requires RFC 5424 with octet counting. The header follows IHE ITI TF-2 3.20.6 (ATNA): facility
10 (security/authorization), severity 5 (notice), MSGID ``IHE+RFC-3881``, and the message a
UTF-8 BOM and the XML.
"""

from __future__ import annotations

import socket
import ssl
from datetime import UTC, datetime

from node.config.atna import AtnaDestination

__all__ = ["ATNA_MSGID", "SyslogSender", "syslog_message"]

ATNA_MSGID = "IHE+RFC-3881"
_PRI = 10 * 8 + 5  # authpriv.notice
_BOM = b"\xef\xbb\xbf"


def _field(value: str, limit: int) -> str:
    """A header field: printable US-ASCII without spaces, at most ``limit`` characters."""
    cleaned = "".join(ch for ch in value if 33 <= ord(ch) <= 126)[:limit]
    return cleaned or "-"


def syslog_message(
    xml: bytes, *, host: str, app_name: str, procid: str, timestamp: str | None = None
) -> bytes:
    """The RFC 5424 message carrying ``xml`` (no transport framing)."""
    stamp = timestamp or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    header = (
        f"<{_PRI}>1 {_field(stamp, 64)} {_field(host, 255)} {_field(app_name, 48)} "
        f"{_field(procid, 128)} {ATNA_MSGID} - "
    )
    return header.encode("ascii") + _BOM + xml


class SyslogSender:
    """Sends messages to one destination; TCP and TLS keep one connection, reopened after an
    error. Not thread-safe: the exporter's one thread uses it."""

    def __init__(self, dest: AtnaDestination, timeout: float) -> None:
        self.dest = dest
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._tls: ssl.SSLContext | None = None
        if dest.transport == "tls":
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(dest.ca))
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            if dest.cert is not None and dest.key is not None:
                ctx.load_cert_chain(str(dest.cert), str(dest.key))
            self._tls = ctx

    def send(self, message: bytes) -> None:
        """Send one message (raises ``OSError`` on failure, the connection then closed)."""
        if self.dest.transport == "udp":
            with socket.socket(self._family(), socket.SOCK_DGRAM) as s:
                s.sendto(message, (self.dest.host, self.dest.port))
            return
        frame = str(len(message)).encode("ascii") + b" " + message  # RFC 6587 3.4.1
        try:
            self._connected().sendall(frame)
        except OSError:
            self.close()
            raise

    def _family(self) -> int:
        return socket.getaddrinfo(self.dest.host, self.dest.port)[0][0]

    def _connected(self) -> socket.socket:
        if self._sock is None:
            raw = socket.create_connection((self.dest.host, self.dest.port), self.timeout)
            try:
                if self._tls is not None:
                    self._sock = self._tls.wrap_socket(raw, server_hostname=self.dest.host)
                else:
                    self._sock = raw
            except BaseException:
                raw.close()
                raise
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
