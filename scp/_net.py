"""Socket tuning pynetdicom does not do itself (DESIGN.md section 4).

Without ``TCP_NODELAY`` a DICOM message's last segment waits for the peer's delayed ACK
(about 40 ms per message on Linux). pynetdicom's DUL reactor also sleeps 1 ms whenever its
queue is empty; we shorten that per association. ``_run_loop_delay`` is a private pynetdicom
attribute (3.0): if it disappears we only lose a little latency, never correctness.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

__all__ = ["RUN_LOOP_DELAY", "tune_association"]

log = logging.getLogger(__name__)

RUN_LOOP_DELAY = 0.0001


def tune_association(event: Any) -> None:
    """``EVT_CONN_OPEN`` handler: disable Nagle and shorten the DUL poll interval."""
    assoc = event.assoc
    try:
        sock = assoc.dul.socket.socket
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError) as exc:  # pragma: no cover - platform specific
        log.debug("could not set TCP_NODELAY: %s", exc)
    if hasattr(assoc.dul, "_run_loop_delay"):
        assoc.dul._run_loop_delay = RUN_LOOP_DELAY
