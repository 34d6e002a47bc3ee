"""Why ``node run`` could not open its listening sockets, in one line an admin can act on.

The node binds the DICOM port (``scp.host``/``scp.port``) and, if enabled, the metrics port at
start; an ``OSError`` there used to end in a dozen frames of pynetdicom and socketserver. The
error does not say which socket failed, so each configured address is probed with a bind of
its own to name the one that is taken.
"""

from __future__ import annotations

import errno
import socket

from node.cli.errors import CommandUsageError
from node.config import NodeConfig

__all__ = ["LISTEN_ERRNOS", "listen_error"]

LISTEN_ERRNOS = frozenset({errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL})
"""Errors of ``bind`` that the admin fixes in the config or by stopping another program."""

_WHY = {
    errno.EADDRINUSE: "address already in use (another program, or another node, listens there)",
    errno.EACCES: "permission denied (ports below 1024 need CAP_NET_BIND_SERVICE)",
    errno.EADDRNOTAVAIL: "address not available on this machine",
}


def _bind_errno(host: str, port: int) -> int | None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return errno.EADDRNOTAVAIL
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as exc:
            return exc.errno
    return None


def listen_error(cfg: NodeConfig, exc: OSError) -> CommandUsageError:
    """The one-line error for a failed bind ``exc`` at start-up (exit 2)."""
    places = [("scp", cfg.scp.host, cfg.scp.port)]
    if cfg.metrics.enabled:
        places.append(("metrics", cfg.metrics.host, cfg.metrics.port))
    for section, host, port in places:
        code = _bind_errno(host, port)
        if code is not None:
            why = _WHY.get(code, exc.strerror or str(exc))
            return CommandUsageError(
                f"node run: cannot listen on {host}:{port} ({section}.host/{section}.port): {why}"
            )
    why = _WHY.get(exc.errno or 0, exc.strerror or str(exc))
    return CommandUsageError(f"node run: cannot open a listening socket: {why}")
