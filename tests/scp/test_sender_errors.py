"""The Storage SCU says why an association failed: refused, timed out or aborted (#16.9)."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from scp import DestinationSettings, SendError, SenderSettings, StorageSender
from tests.support.peers import free_port
from tests.support.synthetic import synthetic_ct_study, write_study


def _send(port: int, tmp_path: Path, timeout: float = 1.0) -> str:
    dest = DestinationSettings("PACS", "127.0.0.1", port, "BLINDREAD")
    sender = StorageSender(SenderSettings(timeout_seconds=timeout))
    with pytest.raises(SendError) as info:
        sender.send(dest, write_study(synthetic_ct_study(1), tmp_path))
    return str(info.value)


@contextmanager
def _listener(on_accept: str) -> Iterator[int]:
    """A TCP peer that accepts and then stays silent (``silent``) or closes at once (``close``)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    held: list[socket.socket] = []
    stop = threading.Event()

    def run() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            if on_accept == "close":
                conn.close()
            else:
                held.append(conn)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join(2)
        for c in held:
            c.close()
        srv.close()


def test_connection_refused_is_not_called_aborted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="scp"):
        msg = _send(free_port(), tmp_path)
    assert "connection refused" in msg and "aborted" not in msg
    assert any("connection refused" in r.getMessage() for r in caplog.records
               if r.name.startswith("scp"))  # fmt: skip


def test_silent_peer_is_a_timeout(tmp_path: Path) -> None:
    with _listener("silent") as port:
        msg = _send(port, tmp_path, timeout=0.5)
    assert "timed out" in msg and "refused" not in msg


def test_peer_closing_the_connection_is_an_abort(tmp_path: Path) -> None:
    with _listener("close") as port:
        msg = _send(port, tmp_path)
    assert "aborted" in msg and "refused" not in msg and "timed out" not in msg
