"""Our Storage SCP against real peers: dcmtk echoscu/storescu, pynetdicom SCUs.

Checks bytes are spooled exactly as sent (compressed syntaxes included), and that every
refusal (association policy, watermark, malformed dataset) has its exact status and leaves the
server answering C-ECHO.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, AllStoragePresentationContexts
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from node.app import build_service
from node.metrics import NodeMetrics
from node.service import NodeService
from scp import ACCEPTED_TRANSFER_SYNTAXES, status
from tests.support.nodeutil import node_config, running_node
from tests.support.peers import peer_env, require_tool
from tests.support.synthetic import synthetic_ct_study, write_study

pytestmark = pytest.mark.peer

TRUNCATED = {"MR_truncated.dcm", "rtplan_truncated.dcm"}
# storescu cannot read these (non-standard VR bytes; odd-length RLE pixel data)
DCMTK_UNREADABLE = {"SC_rgb_jpeg.dcm", "rtdose_rle.dcm", "rtdose_rle_1frame.dcm"}
STORESCU_PROPOSE = {
    "1.2.840.10008.1.2": ["-xi"],
    "1.2.840.10008.1.2.1": ["-xe"],
    "1.2.840.10008.1.2.2": ["-xb"],
    "1.2.840.10008.1.2.1.99": ["-xd"],
    "1.2.840.10008.1.2.4.50": ["-xy"],
    "1.2.840.10008.1.2.4.51": ["-xx"],
    "1.2.840.10008.1.2.4.70": ["-xs"],
    "1.2.840.10008.1.2.4.80": ["-xt"],
    "1.2.840.10008.1.2.4.81": ["-xu"],
    "1.2.840.10008.1.2.4.90": ["-xv"],
    "1.2.840.10008.1.2.4.91": ["-xw"],
    "1.2.840.10008.1.2.5": ["-xr"],
}
STORAGE = {str(cx.abstract_syntax) for cx in AllStoragePresentationContexts}


def pydicom_test_files() -> list[Path]:
    """pydicom's bundled test files that a storage SCU can send (file meta, storage class)."""
    ct = get_testdata_file("CT_small.dcm", download=False)
    assert ct is not None
    out = []
    for p in sorted(Path(ct).parent.glob("*.dcm")):
        try:
            meta = read_file_meta_info(p)
            ts, sop = meta.TransferSyntaxUID, meta.MediaStorageSOPClassUID
        except Exception:
            continue
        if ts in ACCEPTED_TRANSFER_SYNTAXES and str(sop) in STORAGE:
            out.append(p)
    return out


def dcmtk_sees_sop(path: Path) -> bool:
    """Whether dcmtk parses the file far enough to find its SOP Instance UID."""
    r = subprocess.run(
        [require_tool("dcmdump"), "-q", "+P", "0008,0018", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return r.returncode == 0 and "SOPInstanceUID" in r.stdout


def dataset_bytes(path: Path) -> bytes:
    """The bytes of a DICOM file after its file meta (what travels in a C-STORE)."""
    data = path.read_bytes()
    meta_end = 132 + 12 + int.from_bytes(data[140:144], "little")
    return data[meta_end:]


def spooled(svc: NodeService, ds: Dataset) -> Path:
    key = svc.pseudonyms.study
    return svc.spool.root / key(str(ds.StudyInstanceUID)) / f"{key(str(ds.SOPInstanceUID))}.dcm"


def echo_ok(port: int, calling: str = "ECHOSCU") -> bool:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="BLINDREAD")
    if not assoc.is_established:
        return False
    rsp = assoc.send_c_echo()
    assoc.release()
    return bool(rsp) and int(rsp.Status) == 0


def store(port: int, item: Dataset | Path, calling: str = "SCU") -> int:
    """One C-STORE through pynetdicom; returns the status."""
    ae = AE(ae_title=calling)
    if isinstance(item, Path):
        meta = read_file_meta_info(item)
        ae.add_requested_context(meta.MediaStorageSOPClassUID, [meta.TransferSyntaxUID])
    else:
        ae.add_requested_context(item.SOPClassUID, [item.file_meta.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", port, ae_title="BLINDREAD")
    assert assoc.is_established
    rsp = assoc.send_c_store(item)
    assoc.release()
    return int(rsp.Status)


def spool_files(svc: NodeService) -> list[Path]:
    return sorted(p for p in svc.spool.root.rglob("*") if p.is_file())


def test_dcmtk_echoscu(tmp_path: Path) -> None:
    echoscu = require_tool("echoscu")
    with running_node(node_config(tmp_path)) as svc:
        r = subprocess.run(
            [echoscu, "-aet", "DCMTK", "-aec", "BLINDREAD", "127.0.0.1", str(svc.port)],
            env=peer_env(),
            capture_output=True,
            timeout=30,
        )
        assert r.returncode == 0, r.stderr


def test_dcmtk_storescu_directory_stored_as_sent(tmp_path: Path) -> None:
    storescu = require_tool("storescu")
    files = [p for p in pydicom_test_files() if p.name not in TRUNCATED | DCMTK_UNREADABLE]
    syntaxes = {str(read_file_meta_info(p).TransferSyntaxUID) for p in files}
    # compressed syntaxes really are in the directory
    assert {
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.5",
        "1.2.840.10008.1.2.1.99",
    } <= syntaxes
    by_sop: dict[str, Path] = {}
    for p in files:  # one file per SOP Instance UID (some test files share one)
        ds = dcmread(p, stop_before_pixels=True)
        uids = [
            str(ds.get(k, "") or "")
            for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
        ]
        if (
            all(uids)
            and uids[2] == read_file_meta_info(p).MediaStorageSOPInstanceUID
            and dcmtk_sees_sop(p)
        ):
            by_sop.setdefault(uids[2], p)
    assert len(by_sop) >= 30
    indir = tmp_path / "in"
    indir.mkdir()
    for p in by_sop.values():
        shutil.copy(p, indir / p.name)
    with running_node(node_config(tmp_path)) as svc:
        # one storescu run (+sd: a directory, one association) per transfer syntax, with the
        # option that makes storescu propose that syntax instead of transcoding
        groups: dict[str, list[Path]] = {}
        for p in sorted(indir.iterdir()):
            groups.setdefault(str(read_file_meta_info(p).TransferSyntaxUID), []).append(p)
        for ts, paths in groups.items():
            if ts not in STORESCU_PROPOSE:
                for p in paths:
                    by_sop.pop(str(read_file_meta_info(p).MediaStorageSOPInstanceUID))
                continue
            sub = tmp_path / ("by-ts-" + ts)
            sub.mkdir()
            for p in paths:
                shutil.move(p, sub / p.name)
            r = subprocess.run(
                [
                    storescu,
                    "-aet",
                    "DCMTK",
                    "-aec",
                    "BLINDREAD",
                    "+sd",
                    "-R",
                    *STORESCU_PROPOSE[ts],
                    "127.0.0.1",
                    str(svc.port),
                    str(sub),
                ],
                env=peer_env(),
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert r.returncode == 0, r.stderr[-3000:]
        for p in by_sop.values():
            target = spooled(svc, dcmread(p, stop_before_pixels=True))
            assert target.is_file(), p.name
            # storescu re-serialises headers (group lengths, padding), but the pixel data
            # (compressed fragments included) must arrive and be stored untouched
            a, b = dcmread(target), dcmread(p)
            if "PixelData" in b:
                assert a.PixelData == b.PixelData, p.name
            meta = read_file_meta_info(target)
            assert meta.TransferSyntaxUID == read_file_meta_info(p).TransferSyntaxUID
        assert len(spool_files(svc)) == len(by_sop) >= 25
        sent = {str(read_file_meta_info(p).TransferSyntaxUID) for p in by_sop.values()}
        assert {
            "1.2.840.10008.1.2.4.50",
            "1.2.840.10008.1.2.4.70",
            "1.2.840.10008.1.2.4.90",
            "1.2.840.10008.1.2.1.99",
            "1.2.840.10008.1.2",
        } <= sent
        assert echo_ok(svc.port)


def test_files_stored_byte_for_byte(tmp_path: Path) -> None:
    """Sent raw by our SCU (no decoding), the spooled dataset bytes equal the file's."""
    files = {}
    for p in pydicom_test_files():
        if p.name in TRUNCATED:
            continue
        ds = dcmread(p, stop_before_pixels=True)
        if all(k in ds for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")):
            if ds.SOPInstanceUID == read_file_meta_info(p).MediaStorageSOPInstanceUID:
                files.setdefault(str(ds.SOPInstanceUID), p)
    with running_node(node_config(tmp_path)) as svc:
        for p in files.values():
            assert store(svc.port, p) == 0, p.name
            target = spooled(svc, dcmread(p, stop_before_pixels=True))
            assert dataset_bytes(target) == dataset_bytes(p), p.name
        assert len(files) >= 30
        sent = {str(read_file_meta_info(p).TransferSyntaxUID) for p in files.values()}
        assert {
            "1.2.840.10008.1.2.4.50",
            "1.2.840.10008.1.2.4.70",
            "1.2.840.10008.1.2.4.90",
            "1.2.840.10008.1.2.5",
            "1.2.840.10008.1.2.1.99",
        } <= sent


def test_truncated_files_refused_with_c001(tmp_path: Path) -> None:
    with running_node(node_config(tmp_path)) as svc:
        for p in pydicom_test_files():
            if p.name in TRUNCATED:
                assert store(svc.port, p) == status.CANNOT_DECODE == 0xC001, p.name
        assert spool_files(svc) == []
        assert echo_ok(svc.port)


def test_garbage_dataset_refused(tmp_path: Path) -> None:
    ds = synthetic_ct_study(1)[0]
    good = write_study([ds], tmp_path / "good")[0]
    bad = tmp_path / "bad.dcm"
    data = good.read_bytes()
    bad.write_bytes(data[:-5000])  # pixel data cut short
    with running_node(node_config(tmp_path)) as svc:
        assert store(svc.port, bad) == 0xC001
        assert spool_files(svc) == []
        assert echo_ok(svc.port)
        assert store(svc.port, good) == 0x0000
        assert len(spool_files(svc)) == 1


@pytest.mark.parametrize(
    ("missing", "code"),
    [("StudyInstanceUID", 0xC002), ("SeriesInstanceUID", 0xC003)],
)
def test_missing_uid_refused(tmp_path: Path, missing: str, code: int) -> None:
    ds = synthetic_ct_study(1)[0]
    delattr(ds, missing)
    with running_node(node_config(tmp_path)) as svc:
        assert store(svc.port, ds) == code
        assert spool_files(svc) == []
        assert echo_ok(svc.port)


def test_sop_uid_mismatch_refused(tmp_path: Path) -> None:
    ds = synthetic_ct_study(1)[0]
    path = write_study([ds], tmp_path / "in")[0]
    meta = read_file_meta_info(path)
    # file meta names another instance than the dataset: C-STORE's Affected SOP differs
    full = dcmread(path)
    full.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    full.save_as(path, enforce_file_format=False)
    assert meta.MediaStorageSOPInstanceUID != "1.2.3.4.5"
    with running_node(node_config(tmp_path)) as svc:
        assert store(svc.port, path) == status.MISSING_SOP_UID == 0xC004
        assert spool_files(svc) == []
        assert echo_ok(svc.port)


def test_watermark_refuses_with_a700_and_writes_nothing(tmp_path: Path) -> None:
    cfg = node_config(tmp_path, scp={"min_free_bytes": 10**18})
    metrics = NodeMetrics()
    svc = build_service(cfg, lambda job: None, metrics=metrics)
    svc.start()
    try:
        assert store(svc.port, synthetic_ct_study(1)[0]) == 0xA700
        assert spool_files(svc) == []
        assert echo_ok(svc.port)
        refused = metrics.registry.get_sample_value(
            "blindread_instances_refused_total", {"reason": "spool_full"}
        )
        assert refused == 1
    finally:
        svc.stop(timeout=5)


def test_resend_replaces_idempotently(tmp_path: Path) -> None:
    ds = synthetic_ct_study(1)[0]
    with running_node(node_config(tmp_path)) as svc:
        assert store(svc.port, ds) == 0
        ds.SeriesDescription = "second copy"
        assert store(svc.port, ds) == 0
        files = spool_files(svc)
        assert len(files) == 1
        assert dcmread(files[0]).SeriesDescription == "second copy"


def test_wrong_calling_ae_rejected(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = node_config(tmp_path, scp={"allowed_calling_ae_titles": ["GOODAE"]})
    with running_node(cfg) as svc, caplog.at_level(logging.WARNING, logger="scp._server"):
        ae = AE(ae_title="EVILAE")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", svc.port, ae_title="BLINDREAD")
        assert assoc.is_rejected
        rj = assoc.acceptor.primitive
        assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x03)
        assert any("EVILAE@127.0.0.1" in r.getMessage() for r in caplog.records)
        assert echo_ok(svc.port, calling="GOODAE")


def test_wrong_called_ae_rejected(tmp_path: Path) -> None:
    with running_node(node_config(tmp_path)) as svc:
        ae = AE(ae_title="SCU")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", svc.port, ae_title="NOTUS")
        assert assoc.is_rejected
        rj = assoc.acceptor.primitive
        assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x07)
        assert echo_ok(svc.port)


def test_disallowed_ip_refused_at_accept(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Closed before its A-ASSOCIATE-RQ is read (issue #16): no A-ASSOCIATE-RJ, no slot taken.

    The policy's own address check (an A-ASSOCIATE-RJ, reason 0x01) stays behind it as a second
    line; tests/scp/test_scp_units.py covers it.
    """
    cfg = node_config(tmp_path, scp={"allowed_networks": ["127.0.0.1/32"], "host": "0.0.0.0"})
    with running_node(cfg) as svc, caplog.at_level(logging.WARNING, logger="scp"):
        ae = AE(ae_title="FROM2")
        ae.add_requested_context(Verification)
        assoc = ae.associate(
            "127.0.0.1", svc.port, ae_title="BLINDREAD", bind_address=("127.0.0.2", 0)
        )
        assert not assoc.is_established
        assert not assoc.is_rejected  # no RJ: the RQ was never read
        assert any(
            "connection from 127.0.0.2 refused at accept" in r.getMessage()
            for r in caplog.records
        )
        assert echo_ok(svc.port)


def test_tcp_nodelay_on_both_ends(tmp_path: Path) -> None:
    import socket
    import time

    from pynetdicom import evt

    from scp._net import tune_association

    with running_node(node_config(tmp_path)) as svc:
        ae = AE(ae_title="SCU")
        ae.add_requested_context(Verification)
        assoc = ae.associate(
            "127.0.0.1",
            svc.port,
            ae_title="BLINDREAD",
            evt_handlers=[(evt.EVT_CONN_OPEN, tune_association)],
        )
        assert assoc.is_established
        ours = assoc.dul.socket.socket
        assert ours.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        deadline = time.monotonic() + 5
        while not svc.server.ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.01)
        server_side = svc.server.ae.active_associations[0].dul.socket.socket
        assert server_side.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assoc.release()
