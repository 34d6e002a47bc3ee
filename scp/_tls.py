"""``ssl.SSLContext`` objects for DICOM TLS from :class:`TlsSettings` (stdlib ``ssl`` only)."""

from __future__ import annotations

import ssl

from scp._settings import TlsSettings

__all__ = ["client_context", "server_context"]


def server_context(tls: TlsSettings) -> ssl.SSLContext:
    """Context for our SCP; verifies client certificates against ``tls.ca`` when required."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(tls.cert), str(tls.key))
    if tls.ca is not None:
        ctx.load_verify_locations(cafile=str(tls.ca))
    ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    if tls.ca is None:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def client_context(tls: TlsSettings) -> ssl.SSLContext:
    """Context for our SCU: verifies the peer (CA from ``tls.ca``) and presents our cert."""
    ctx = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca) if tls.ca is not None else None
    )
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(tls.cert), str(tls.key))
    return ctx
