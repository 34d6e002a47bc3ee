"""The C-STORE fast path (scp/_fastpath.py): same answers as pynetdicom's path, engaged, safe.

The other SCP tests (dcmtk storescu with every transfer syntax, refusals, kill -9) already run
through the fast path, since it is on by default; these check what is specific to it: that it
is really used, that its hand-encoded messages are what pynetdicom decodes, that C-ECHO still
goes through pynetdicom on the same association, multi-PDU data sets, and that a peer breaking
the protocol (or stalling) is aborted with nothing stored while the server keeps serving.
"""

from __future__ import annotations

import hashlib
import struct
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.dimse_messages import C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from scp import ScpSettings, Spool, StorageServer
from scp._fastpath import decode_command, encode_store_rsp, install
from scp.errors import ProtocolError
from tests.support.peers import free_port, peer_env, require_tool
from tests.support.synthetic import synthetic_ct_study, write_study


def log_id(uid: str) -> str:
    return hashlib.sha256(uid.encode()).hexdigest()[:16]


@contextmanager
def server(
    tmp_path: Path, spy: list[int] | None = None, **settings: Any
) -> Iterator[StorageServer]:
    """A Storage SCP on a free port; ``spy`` counts calls of pynetdicom's C-STORE handler."""
    spool = Spool(tmp_path / "spool", log_id)
    srv = StorageServer(
        ScpSettings(spool_dir=tmp_path / "spool", port=free_port(), **settings), spool, log_id
    )
    if spy is not None:
        original = srv._on_store

        def counting(event: Any) -> int:
            spy[0] += 1
            return original(event)

        srv._on_store = counting  # type: ignore[method-assign]
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def spooled(srv: StorageServer) -> list[Path]:
    return sorted(srv.spool.root.glob("*/*.dcm"))


def ct(n: int = 1) -> list[Dataset]:
    return synthetic_ct_study(n, size=512)


# -- hand-encoded messages against pynetdicom's decoder ------------------------------------------
def decode_rsp(pdus: bytes) -> C_STORE:
    msg = DIMSEMessage()
    off, done = 0, False
    while off < len(pdus):
        length = struct.unpack_from(">I", pdus, off + 2)[0]
        pdu = P_DATA_TF()
        pdu.decode(pdus[off : off + 6 + length])
        done = msg.decode_msg(pdu.to_primitive())
        off += 6 + length
    assert done
    primitive = msg.message_to_primitive()
    assert isinstance(primitive, C_STORE)
    return primitive


@pytest.mark.parametrize("max_pdu", [0, 16384, 64, 7])
def test_store_rsp_is_what_pynetdicom_decodes(max_pdu: int) -> None:
    raw = encode_store_rsp(3, 4711, CTImageStorage, "1.2.3.4.5", 0xA700, max_pdu)
    rsp = decode_rsp(raw)
    assert int(rsp.Status) == 0xA700
    assert rsp.MessageIDBeingRespondedTo == 4711
    assert rsp.AffectedSOPClassUID == CTImageStorage
    assert rsp.AffectedSOPInstanceUID == "1.2.3.4.5"
    off = 0
    while off < len(raw):  # every PDU within the requestor's limit, all on context 3
        length = struct.unpack_from(">I", raw, off + 2)[0]
        assert max_pdu == 0 or length <= max(max_pdu, 7)
        assert raw[off + 10] == 3
        off += 6 + length


def test_decode_command_of_pynetdicom_c_store_rq() -> None:
    primitive = C_STORE()
    primitive.MessageID = 12
    primitive.AffectedSOPClassUID = CTImageStorage
    primitive.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    primitive.Priority = 2
    primitive.MoveOriginatorApplicationEntityTitle = "MOVER"
    primitive.DataSet = BytesIO(b"\x08\x00\x18\x00\x00\x00\x00\x00")
    msg = C_STORE_RQ()
    msg.primitive_to_message(primitive)
    command = b"".join(
        bytes(item[1])[1:]  # (context id, message control header + data) per PDV
        for p_data in msg.encode_msg(1, 0)
        for item in p_data.presentation_data_value_list
        if bytes(item[1])[0] & 0x01
    )
    decoded = decode_command(command)
    assert (decoded.field, decoded.message_id, decoded.dataset_type) == (0x0001, 12, 0x0001)
    assert decoded.sop_class == CTImageStorage
    assert decoded.sop_instance == "1.2.826.0.1.3680043.8.498.1"


@pytest.mark.parametrize(
    "raw",
    [
        b"\x00\x00\x00\x01",  # truncated header
        struct.pack("<HHI", 0, 0x0100, 10) + b"\x01\x00",  # value overruns the set
        struct.pack("<HHI", 0x0008, 0x0018, 2) + b"1\x00",  # not group 0000
    ],
)
def test_decode_command_refuses_malformed(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_command(raw)


def test_install_leaves_pynetdicom_alone_if_its_internals_changed() -> None:
    class FakeDul:
        pass

    class FakeAssoc:
        dul = FakeDul()

    assert install(FakeAssoc(), lambda rq: 0) is None


# -- against real peers ------------------------------------------------------------------------
def test_storescu_goes_through_the_fast_path(tmp_path: Path) -> None:
    storescu = require_tool("storescu")
    write_study(ct(5), tmp_path / "in")
    calls = [0]
    with server(tmp_path, spy=calls) as srv:
        r = subprocess.run(
            [
                storescu,
                "-aec",
                "BLINDREAD",
                "+sd",
                "127.0.0.1",
                str(srv.port),
                str(tmp_path / "in"),
            ],
            env=peer_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        assert len(spooled(srv)) == 5
        assert calls[0] == 0  # pynetdicom's C-STORE path never ran


def test_fast_path_off_uses_pynetdicom_with_the_same_result(tmp_path: Path) -> None:
    datasets = ct(2)
    calls = [0]
    with server(tmp_path, spy=calls, fast_path=False) as srv:
        ae = AE(ae_title="SCU")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", srv.port, ae_title="BLINDREAD")
        assert [int(assoc.send_c_store(ds).Status) for ds in datasets] == [0, 0]
        assoc.release()
        assert calls[0] == 2 and len(spooled(srv)) == 2


def test_echo_and_store_interleaved_on_one_association(tmp_path: Path) -> None:
    datasets = ct(3)
    with server(tmp_path) as srv:
        ae = AE(ae_title="SCU")
        ae.add_requested_context(CTImageStorage)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", srv.port, ae_title="BLINDREAD")
        assert assoc.is_established
        statuses = []
        for ds in datasets:
            statuses.append(int(assoc.send_c_echo().Status))
            statuses.append(int(assoc.send_c_store(ds).Status))
        statuses.append(int(assoc.send_c_echo().Status))
        assoc.release()
        assert statuses == [0] * 7
        assert len(spooled(srv)) == 3


def test_dataset_over_many_small_pdus_stored_byte_for_byte(tmp_path: Path) -> None:
    ds = ct(1)[0]
    with server(tmp_path, max_pdu=4096) as srv:  # ~130 P-DATA-TF PDUs for one CT image
        ae = AE(ae_title="SCU")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", srv.port, ae_title="BLINDREAD")
        assert int(assoc.send_c_store(ds).Status) == 0
        assoc.release()
        (path,) = spooled(srv)
        assert dcmread(path).PixelData == ds.PixelData


def raw_association(port: int) -> Any:
    ae = AE(ae_title="SCU")
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="BLINDREAD")
    assert assoc.is_established
    return assoc


def pdata(*items: tuple[int, int, bytes]) -> bytes:
    body = b"".join(struct.pack(">IBB", len(d) + 2, cx, mch) + d for cx, mch, d in items)
    return struct.pack(">BBI", 0x04, 0, len(body)) + body


def store_command(sop_instance: str = "1.2.3.4") -> bytes:
    def el(elem: int, value: bytes) -> bytes:
        return struct.pack("<HHI", 0, elem, len(value)) + value

    uid = sop_instance.encode() + (b"\x00" if len(sop_instance) % 2 else b"")
    body = (
        el(0x0002, CTImageStorage.encode() + b"\x00" * (len(CTImageStorage) % 2))
        + el(0x0100, b"\x01\x00")
        + el(0x0110, b"\x07\x00")
        + el(0x0700, b"\x00\x00")
        + el(0x0800, b"\x01\x00")
        + el(0x1000, uid)
    )
    return el(0x0000, struct.pack("<I", len(body))) + body


def wait_aborted(assoc: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if assoc.is_aborted or not assoc.is_established:
            return True
        time.sleep(0.05)
    return False


def context_id(assoc: Any) -> int:
    return next(
        cx.context_id for cx in assoc.accepted_contexts if cx.abstract_syntax == CTImageStorage
    )


@pytest.mark.parametrize(
    "attack",
    ["dataset_without_command", "item_overruns_pdu", "reserved_control_bits", "command_mid_data"],
)
def test_protocol_violation_aborts_and_stores_nothing(
    tmp_path: Path, attack: str, caplog: pytest.LogCaptureFixture
) -> None:
    with server(tmp_path) as srv:
        assoc = raw_association(srv.port)
        cx = context_id(assoc)
        send = assoc.dul.socket.send
        if attack == "dataset_without_command":
            send(pdata((cx, 0x02, b"\x08\x00\x18\x00")))
        elif attack == "item_overruns_pdu":
            send(pdata((cx, 0x03, store_command())))
            pdu = bytearray(pdata((cx, 0x00, b"\x08\x00\x18\x00UI\x02\x001\x00")))
            pdu[6:10] = struct.pack(">I", 1000)  # PDV longer than its PDU
            send(bytes(pdu))
        elif attack == "reserved_control_bits":
            send(pdata((cx, 0x07, store_command())))
        else:
            send(pdata((cx, 0x03, store_command())))
            send(pdata((cx, 0x00, b"\x08\x00\x18\x00UI\x02\x001\x00")))
            send(pdata((cx, 0x03, store_command())))
        assert wait_aborted(assoc)
        assert "protocol error from SCU" in caplog.text  # the fast path's own check
        assert spooled(srv) == []
        fresh = raw_association(srv.port)
        assert int(fresh.send_c_echo().Status) == 0
        fresh.release()


def test_peer_stalling_mid_store_is_dropped_without_storing(tmp_path: Path) -> None:
    with server(tmp_path, network_timeout=1.0) as srv:
        assoc = raw_association(srv.port)
        cx = context_id(assoc)
        assoc.dul.socket.send(pdata((cx, 0x03, store_command())))
        assoc.dul.socket.send(pdata((cx, 0x00, b"\x08\x00\x18\x00UI\x02\x001\x00")))
        t0 = time.monotonic()
        assert wait_aborted(assoc, timeout=15)
        assert time.monotonic() - t0 < 10
        assert spooled(srv) == []
        fresh = raw_association(srv.port)
        assert int(fresh.send_c_echo().Status) == 0
        fresh.release()


def test_store_on_a_context_of_another_sop_class_is_left_to_pynetdicom(tmp_path: Path) -> None:
    """A C-STORE whose SOP class is not its context's abstract syntax is not ours to judge."""
    calls = [0]
    with server(tmp_path, spy=calls) as srv:
        assoc = raw_association(srv.port)
        verification = next(
            cx.context_id for cx in assoc.accepted_contexts if cx.abstract_syntax == Verification
        )
        assoc.dul.socket.send(pdata((verification, 0x03, store_command())))
        assoc.dul.socket.send(pdata((verification, 0x02, b"\x08\x00\x18\x00\x00\x00\x00\x00")))
        deadline = time.monotonic() + 10
        while calls[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert calls[0] == 1  # pynetdicom's own path took it, not the fast path
        assert spooled(srv) == []
        assoc.abort()


def test_pdu_length_that_lies_costs_no_memory(tmp_path: Path) -> None:
    """A header claiming ~4 GB, a few bytes, then close: dropped, nothing reserved up front."""
    import resource

    with server(tmp_path) as srv:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assoc = raw_association(srv.port)
        assoc.dul.socket.send(struct.pack(">BBI", 0x04, 0, 0xFFFFFFF0) + b"\x00" * 64)
        time.sleep(0.3)
        assoc.dul.socket.socket.close()
        time.sleep(0.5)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert after - before < 64 * 1024  # KiB: far below the claimed 4 GB
        assert spooled(srv) == []
        fresh = raw_association(srv.port)
        assert int(fresh.send_c_echo().Status) == 0
        fresh.release()
