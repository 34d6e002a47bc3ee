"""Refused and greedy hosts holding sockets open cannot starve legitimate senders (issue #16, 5).

Real sockets on loopback: our SCP listens on 127.0.0.1 and allows only 127.0.0.1/32; the
"attacker" binds its sockets to 127.0.0.2 (any 127/8 address is local on Linux). Its connections
send nothing, as a port scanner or a stalled peer would.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node.app import build_service
from node.metrics import NodeMetrics
from scp import ScpSettings, Spool, StorageServer
from tests.support.nodeutil import node_config
from tests.support.peers import free_port, peer_env, require_tool
from tests.support.synthetic import synthetic_ct_study, write_study

pytestmark = pytest.mark.fault

ATTACKER = "127.0.0.2"


def log_id(uid: str) -> str:
    return "x" + str(abs(hash(uid)))[:12]


@contextmanager
def scp(tmp_path: Path, rejected: list[int], **settings: Any) -> Iterator[StorageServer]:
    srv = StorageServer(
        ScpSettings(
            spool_dir=tmp_path / "spool",
            port=free_port(),
            allowed_networks=(IPv4Network("127.0.0.1/32"),),
            **settings,
        ),
        Spool(tmp_path / "spool", log_id),
        log_id,
        on_rejected=rejected.append,
    )
    srv.start()
    try:
        yield srv
    finally:
        srv.stop(grace=1)


@contextmanager
def stalled(port: int, n: int, source: str = "127.0.0.1") -> Iterator[list[socket.socket]]:
    """``n`` TCP connections from ``source`` that never send a byte (closed on exit)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((source, 0))
            s.connect(("127.0.0.1", port))
            socks.append(s)
        yield socks
    finally:
        for s in socks:
            s.close()


def closed_by_peer(s: socket.socket, within: float) -> bool:
    """Whether the server closed ``s`` within ``within`` s (EOF or reset), else False."""
    s.settimeout(within)
    try:
        return s.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def echo_status(port: int, source: str = "127.0.0.1") -> int | None:
    ae = AE(ae_title="MODALITY")
    ae.acse_timeout = 5
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="BLINDREAD", bind_address=(source, 0))
    if not assoc.is_established:
        return None
    rsp = assoc.send_c_echo()
    assoc.release()
    return int(rsp.Status) if rsp else None


def test_refused_address_holding_40_sockets_takes_no_slot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """40 > 32 silent sockets from a refused address; a real sender is served while they stay."""
    cfg = node_config(
        tmp_path,
        # a long ACSE timeout: without the accept-time check the 40 sockets would hold every
        # slot for the whole test
        scp={"allowed_networks": ["127.0.0.1/32"], "acse_timeout": 60},
    )
    metrics = NodeMetrics()
    svc = build_service(cfg, lambda job: None, metrics=metrics)
    svc.start()
    try:
        with caplog.at_level(logging.INFO), stalled(svc.port, 40, ATTACKER) as attack:
            assert echo_status(svc.port) == 0  # at once, not after some timeout
            write_study(synthetic_ct_study(3, size=16), tmp_path / "study")
            r = subprocess.run(
                [require_tool("storescu"), "-aet", "CT1", "-aec", "BLINDREAD", "+sd",
                 "127.0.0.1", str(svc.port), str(tmp_path / "study")],
                capture_output=True, text=True, timeout=60, env=peer_env(),
            )
            assert r.returncode == 0, r.stderr
            assert len(list(svc.spool.root.glob("*/*.dcm"))) == 3
            # the attacker still holds its sockets; ours were closed at accept, before any
            # association thread (and slot) existed
            assert all(closed_by_peer(s, 5) for s in attack)
        network = metrics.registry.get_sample_value(
            "blindread_associations_rejected_total", {"reason": "network"}
        )
        assert network == 40
        lines = [r.getMessage() for r in caplog.records if ATTACKER in r.getMessage()]
        assert lines and all("refused at accept" in m for m in lines)
        assert len(lines) == 1  # rate-limited: one line for the flood, not forty
        assert not any("Local Limit" in m or "local limit" in m for m in caplog.messages)
    finally:
        svc.stop(timeout=5)


def test_allowed_address_is_limited_per_address(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rejected: list[int] = []
    with caplog.at_level(logging.WARNING, logger="scp"), scp(
        tmp_path, rejected, acse_timeout=60.0, max_associations_per_address=4
    ) as srv, stalled(srv.port, 4) as held:
        with stalled(srv.port, 3) as extra:
            assert all(closed_by_peer(s, 5) for s in extra)  # beyond the limit: closed
        assert not any(closed_by_peer(s, 0.5) for s in held)  # within it: kept
        assert echo_status(srv.port) is None  # this address is at its limit
        assert rejected == [0x02] * 4  # local-limit-exceeded
        assert any(
            "127.0.0.1 refused at accept" in m and "max_associations_per_address" in m
            for m in caplog.messages
        )


def test_stalled_allowed_socket_is_dropped_after_acse_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Silent, and a slow-loris sending 3 bytes of an A-ASSOCIATE-RQ: both dropped in time."""
    rejected: list[int] = []
    with caplog.at_level(logging.WARNING, logger="scp"), scp(
        tmp_path, rejected, acse_timeout=1.5, max_associations_per_address=2
    ) as srv, stalled(srv.port, 2) as (silent, loris):
        loris.sendall(b"\x01\x00\x00")  # PDU type 1 and half of a header, then nothing
        t0 = time.monotonic()
        assert closed_by_peer(silent, 10)
        assert closed_by_peer(loris, 10)
        assert time.monotonic() - t0 < 10
        deadline = time.monotonic() + 10
        while srv.accept_guard is not None and srv.accept_guard.open_from("127.0.0.1"):
            assert time.monotonic() < deadline, "slots not freed"
            time.sleep(0.05)
        assert echo_status(srv.port) == 0  # the address's slots are free again
        assert rejected == []
        assert any("no A-ASSOCIATE-RQ within" in m for m in caplog.messages)


def test_peer_closing_before_any_byte_frees_its_slot_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A TCP connect + close (a load-balancer health probe, ``wait_for_port``) releases its slot
    as soon as the peer closes, and is not logged as a peer that stalled its A-ASSOCIATE-RQ
    (the slot used to stay held, and the line logged, until ``scp.acse_timeout``)."""
    rejected: list[int] = []
    with caplog.at_level(logging.DEBUG, logger="scp"), scp(
        tmp_path, rejected, acse_timeout=2.0, max_associations_per_address=1
    ) as srv:
        guard = srv.accept_guard
        assert guard is not None
        for _ in range(3):  # probe, then a real association at once, three times over
            socket.create_connection(("127.0.0.1", srv.port), timeout=2).close()
            t0 = time.monotonic()
            # the echo may reach the accept loop before the probe's reader saw the EOF (then
            # it is refused at accept and tried again); without the fix it is refused until
            # the probe's 2 s ACSE timeout
            while echo_status(srv.port) != 0:
                assert time.monotonic() - t0 < 1.0, "the probe's slot is still held"
                time.sleep(0.02)
        deadline = time.monotonic() + 1.0
        while guard.open_from("127.0.0.1") or srv.ae.active_associations:
            assert time.monotonic() < deadline, "slots still held after the echoes"
            time.sleep(0.01)
        time.sleep(2.2)  # past the ACSE deadline of every probe
        assert not any("no A-ASSOCIATE-RQ" in m for m in caplog.messages), caplog.messages
