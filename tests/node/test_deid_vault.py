"""Identifier vault: AES-GCM at rest, WAL, purge, key rotation, and the re-link round trip."""

from __future__ import annotations

import io
import os
import sqlite3
import stat
import time
import urllib.request
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from node.deid import Deidentifier, DeidKeys
from node.vault import IdentifierVault, VaultError
from tests.node.test_deid_engine import make_ct
from tests.support.peers import Orthanc

KEY = b"v" * 32


def test_store_relink_and_ciphertext_only_at_rest(tmp_path: Path) -> None:
    with IdentifierVault(tmp_path / "v.sqlite", KEY) as v:
        v.store("st-1", {"PatientID": "P123", "PatientName": "Doe^Jane"})
        v.store("st-1", {"PatientID": "OTHER", "AccessionNumber": "A9"})  # merge, never replace
        assert v.relink("st-1") == {
            "PatientID": "P123",
            "PatientName": "Doe^Jane",
            "AccessionNumber": "A9",
        }
        assert "st-1" in v and len(v) == 1
        with pytest.raises(VaultError, match="no vault entry"):
            v.relink("st-2")
    raw = (
        (tmp_path / "v.sqlite").read_bytes() + (tmp_path / "v.sqlite-wal").read_bytes()
        if (tmp_path / "v.sqlite-wal").exists()
        else (tmp_path / "v.sqlite").read_bytes()
    )
    assert b"P123" not in raw and b"Doe" not in raw
    assert stat.S_IMODE(os.stat(tmp_path / "v.sqlite").st_mode) == 0o600
    db = sqlite3.connect(tmp_path / "v.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_wrong_key_and_tampering_and_row_swap_fail(tmp_path: Path) -> None:
    p = tmp_path / "v.sqlite"
    with IdentifierVault(p, KEY) as v:
        v.store("st-a", {"PatientID": "A"})
        v.store("st-b", {"PatientID": "B"})
    with IdentifierVault(p, b"w" * 32) as other, pytest.raises(VaultError, match="key"):
        other.relink("st-a")
    db = sqlite3.connect(p)
    nonce, ct = db.execute(
        "SELECT nonce, ciphertext FROM vault WHERE study_pseudonym='st-a'"
    ).fetchone()
    db.execute("UPDATE vault SET nonce=?, ciphertext=? WHERE study_pseudonym='st-b'", (nonce, ct))
    db.commit()
    db.close()
    with IdentifierVault(p, KEY) as v, pytest.raises(VaultError, match="authentication"):
        v.relink("st-b")  # a row moved under another pseudonym does not decrypt


def test_purge_and_rotate(tmp_path: Path) -> None:
    p = tmp_path / "v.sqlite"
    with IdentifierVault(p, KEY) as v:
        v.store("st-old", {"PatientID": "A"})
        v.store("st-new", {"PatientID": "B"})
        v._db.execute(
            "UPDATE vault SET updated=? WHERE study_pseudonym='st-old'", (time.time() - 40 * 86400,)
        )
        assert v.purge(30) == 1
        assert "st-old" not in v and "st-new" in v
        assert v.rotate_key(b"n" * 32) == 1
        assert v.relink("st-new") == {"PatientID": "B"}
    with IdentifierVault(p, b"n" * 32) as v2:
        assert v2.relink("st-new") == {"PatientID": "B"}
    with IdentifierVault(p, KEY) as v3, pytest.raises(VaultError):
        v3.relink("st-new")


def test_open_creates_0600_key(tmp_path: Path) -> None:
    with IdentifierVault.open(tmp_path / "state", tmp_path / "keys") as v:
        v.store("st-x", {"PatientID": "Z"})
    assert stat.S_IMODE(os.stat(tmp_path / "keys" / "vault.key").st_mode) == 0o600
    with IdentifierVault.open(tmp_path / "state", tmp_path / "keys") as v:
        assert v.relink("st-x") == {"PatientID": "Z"}


def _result_sr(deid_ds: Dataset) -> Dataset:
    """A minimal 'AI result' document built only from the de-identified study."""
    sr = Dataset()
    sr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.22"
    sr.SOPInstanceUID = generate_uid()
    sr.SeriesInstanceUID = generate_uid()
    sr.StudyInstanceUID = deid_ds.StudyInstanceUID
    sr.PatientID = deid_ds.PatientID
    sr.PatientName = deid_ds.PatientName
    sr.Modality = "SR"
    sr.ValueType = "CONTAINER"
    sr.SeriesNumber = 9901
    sr.InstanceNumber = 1
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sr.SOPClassUID
    meta.MediaStorageSOPInstanceUID = sr.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sr.file_meta = meta
    return sr


def _relinked_result(tmp_path: Path) -> tuple[Dataset, Dataset]:
    original = make_ct(AccessionNumber="ACC77", StudyID="S1")
    keep = {kw: original[kw].value for kw in ("PatientID", "StudyInstanceUID", "AccessionNumber")}
    res = Deidentifier([], DeidKeys.ephemeral()).deidentify(original)
    assert res.dataset is not None
    with IdentifierVault(tmp_path / "v.sqlite", KEY) as vault:
        vault.store(res.study_pseudonym, res.identifiers)
        sr = _result_sr(res.dataset)
        assert sr.StudyInstanceUID != keep["StudyInstanceUID"]
        vault.relink_dataset(res.study_pseudonym, sr)
    for kw, value in keep.items():
        assert sr[kw].value == value
    orig = make_ct(AccessionNumber="ACC77", StudyID="S1")
    return orig, sr


def test_relink_puts_result_in_original_study(tmp_path: Path) -> None:
    orig, sr = _relinked_result(tmp_path)
    assert sr.StudyInstanceUID == orig.StudyInstanceUID
    assert str(sr.PatientName) == "Doe^Jane" and sr.PatientBirthDate == "19300101"


@pytest.mark.peer
def test_relinked_result_lands_in_original_study_in_orthanc(
    tmp_path: Path, orthanc: Orthanc
) -> None:
    orig, sr = _relinked_result(tmp_path)
    for ds in (orig, sr):
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        req = urllib.request.Request(orthanc.url + "/instances", data=buf.getvalue(), method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 200
    instances = orthanc.instances_of_study(orig.StudyInstanceUID)
    sops = {i["MainDicomTags"]["SOPInstanceUID"] for i in instances}
    assert sops == {orig.SOPInstanceUID, sr.SOPInstanceUID}
    stored = pydicom.dcmread(io.BytesIO(_download(orthanc, instances, sr.SOPInstanceUID)))
    assert stored.PatientID == "P123" and stored.AccessionNumber == "ACC77"


def _download(orthanc: Orthanc, instances: list[dict[str, object]], sop: str) -> bytes:
    oid = next(i["ID"] for i in instances if i["MainDicomTags"]["SOPInstanceUID"] == sop)  # type: ignore[index]
    with urllib.request.urlopen(f"{orthanc.url}/instances/{oid}/file", timeout=30) as resp:
        return bytes(resp.read())


def test_concurrent_writers_from_threads(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with IdentifierVault(tmp_path / "v.sqlite", KEY) as v:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: v.store(f"st-{i % 10}", {f"k{i}": str(i)}), range(40)))
        assert len(v) == 10
        assert v.relink("st-3") == {f"k{i}": str(i) for i in range(3, 40, 10)}
