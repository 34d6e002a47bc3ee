"""Receiving one instance into the spool (scp/_incoming.py, scp/_spool.PartialInstance).

Bytes go to a temp file as they arrive; the status depends on free space, write errors and the
data set's encoding; whatever is refused or cut off leaves nothing in the spool.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import struct
import subprocess
import threading
import time
import zlib
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from scp import Spool, status
from scp._fastpath import StoreRequest
from scp._incoming import IncomingInstance
from scp._spool import PartialInstance
from scp._walk import walk_dataset
from scp.errors import MalformedDatasetError
from tests.scp.test_scp_fastpath import (
    context_id,
    pdata,
    raw_association,
    server,
    spooled,
    store_command,
)
from tests.support.peers import peer_env, require_tool
from tests.support.synthetic import synthetic_ct_study, write_study


def log_id(uid: str) -> str:
    return hashlib.sha256(uid.encode()).hexdigest()[:16]


def dataset_bytes(n_rows: int = 64) -> tuple[bytes, str]:
    ds = synthetic_ct_study(1, size=n_rows)[0]
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = False, True
    write_dataset(fp, ds)
    return fp.getvalue(), str(ds.SOPInstanceUID)


def request(sop: str) -> StoreRequest:
    return StoreRequest("MODALITY", "1.2.840.10008.5.1.4.1.1.2", sop, ExplicitVRLittleEndian)


def leftovers(spool: Spool) -> list[Path]:
    return list((spool.root / ".tmp").iterdir())


def test_fragments_stream_into_one_durable_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", log_id)
    data, sop = dataset_bytes()
    stored: list[str] = []
    incoming = IncomingInstance(spool, request(sop), on_stored=stored.append)
    for start in range(0, len(data), 1000):
        incoming.write(memoryview(data)[start : start + 1000])
    assert incoming.finish() == status.SUCCESS
    (path,) = spool.root.glob("*/*.dcm")
    assert path.read_bytes().endswith(data)
    assert dcmread(path).file_meta.SourceApplicationEntityTitle == "MODALITY"
    assert stored == [path.parent.name] and leftovers(spool) == []


def test_watermark_crossed_while_receiving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "spool", log_id, min_free_bytes=10_000)
    free = [10_000 + 1_500]
    monkeypatch.setattr(spool, "free_bytes", lambda: free[0])
    data, sop = dataset_bytes()
    refused: list[int] = []
    incoming = IncomingInstance(spool, request(sop), on_refused=refused.append)
    incoming.write(data[:1000])  # fits
    free[0] -= 1000
    incoming.write(data[1000:2000])  # would cross the mark: refused, file dropped
    incoming.write(data[2000:])  # the rest is read and dropped
    assert incoming.finish() == status.OUT_OF_RESOURCES == 0xA700
    assert refused == [0xA700]
    assert list(spool.root.glob("*/*.dcm")) == [] and leftovers(spool) == []


@pytest.mark.parametrize("code,expected", [(errno.ENOSPC, 0xA700), (errno.EIO, 0xC005)])
def test_write_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, expected: int
) -> None:
    spool = Spool(tmp_path / "spool", log_id)
    data, sop = dataset_bytes()
    incoming = IncomingInstance(spool, request(sop))

    def failing(self: PartialInstance, data: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(PartialInstance, "write", failing)
    incoming.write(data)
    assert incoming.finish() == expected
    assert list(spool.root.glob("*/*.dcm")) == [] and leftovers(spool) == []


def test_undecodable_refused_and_dropped(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", log_id)
    data, sop = dataset_bytes()
    incoming = IncomingInstance(spool, request(sop))
    incoming.write(data[:-3])
    assert incoming.finish() == status.CANNOT_DECODE
    assert leftovers(spool) == [] and list(spool.root.glob("*/*.dcm")) == []


def test_partial_instance_lifecycle(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", log_id)
    partial = spool.begin()
    partial.write([b"abc", bytearray(b"def")])
    with partial.view(2) as view:
        assert bytes(view) == b"cdef"
    stored = partial.commit("1.2.3", "1.2.3.4")
    assert stored.path.read_bytes() == b"abcdef"
    partial.discard()  # after a commit: nothing happens
    assert stored.path.exists()
    with pytest.raises(ValueError):
        partial.write(b"more")
    dropped = spool.begin()
    dropped.write(b"xyz")
    dropped.discard()
    assert leftovers(spool) == []


def test_deflate_bomb_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import scp._walk

    monkeypatch.setattr(scp._walk, "MAX_INFLATED", 1 << 20)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    bomb = packer.compress(b"\x00" * (4 << 20)) + packer.flush()
    with pytest.raises(MalformedDatasetError, match="inflates beyond"):
        walk_dataset(bomb, DeflatedExplicitVRLittleEndian)


# -- through the network -------------------------------------------------------------------------
def test_connection_lost_mid_instance_leaves_nothing(tmp_path: Path) -> None:
    with server(tmp_path) as srv:
        assoc = raw_association(srv.port)
        cx = context_id(assoc)
        assoc.dul.socket.send(pdata((cx, 0x03, store_command())))
        assoc.dul.socket.send(pdata((cx, 0x00, b"\x08\x00\x18\x00UI\x02\x001\x00" * 100)))
        time.sleep(0.3)
        assert len(leftovers(srv.spool)) == 1  # the instance's temp file, being written
        assoc.dul.socket.socket.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + 10
        while leftovers(srv.spool) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert leftovers(srv.spool) == [] and spooled(srv) == []


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_large_instance_is_not_held_in_memory(tmp_path: Path) -> None:
    """A 72 MB instance from storescu: our process grows by far less than the instance."""
    storescu = require_tool("storescu")
    write_study(synthetic_ct_study(1, size=6000), tmp_path / "in")
    (path,) = (tmp_path / "in").iterdir()
    assert path.stat().st_size > 70_000_000
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.002)

    with server(tmp_path) as srv:
        base = rss_bytes()
        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            r = subprocess.run(
                [storescu, "-aec", "BLINDREAD", "127.0.0.1", str(srv.port), str(path)],
                env=peer_env(),
                capture_output=True,
                text=True,
                timeout=120,
            )
        finally:
            done.set()
            sampler.join()
        assert r.returncode == 0, r.stderr[-2000:]
        (stored,) = spooled(srv)
        assert stored.stat().st_size >= path.stat().st_size - 1000
    assert peak[0] - base < 24_000_000, (peak[0] - base) / 1e6


def test_pdv_header_struct() -> None:  # guards the helper the network tests rely on
    assert pdata((1, 0x03, b"ab")) == struct.pack(">BBIIBB", 4, 0, 8, 4, 1, 3) + b"ab"
