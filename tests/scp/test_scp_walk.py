"""The data set walker (scp/_walk.py) against pydicom's reader and against broken encodings."""

from __future__ import annotations

import zlib
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)

from scp._walk import walk_dataset
from scp.errors import MalformedDatasetError
from tests.scp.test_scp_server import TRUNCATED, pydicom_test_files


def split_file(path: Path) -> tuple[bytes, str]:
    data = path.read_bytes()
    fp = BytesIO(data)
    read_preamble(fp, False)
    meta = _read_file_meta_info(fp)
    return data[fp.tell() :], str(meta.get("TransferSyntaxUID", ExplicitVRLittleEndian))


@pytest.mark.filterwarnings("ignore")
def test_every_pydicom_test_file_agrees_with_pydicom() -> None:
    checked = 0
    for path in pydicom_test_files():
        dataset, ts = split_file(path)
        if path.name in TRUNCATED:
            with pytest.raises(MalformedDatasetError):
                walk_dataset(dataset, ts)
            continue
        ds = dcmread(path)
        uids = walk_dataset(dataset, ts)
        assert (uids.study, uids.series, uids.sop_instance) == tuple(
            str(ds.get(k, "")) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
        ), path.name
        checked += 1
    assert checked >= 60


def nested() -> Dataset:
    """A small data set with a nested sequence (two levels) and the three UIDs."""
    inner = Dataset()
    inner.CodeValue = "T-04000"
    inner.CodeMeaning = "Breast"
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3.4.5"
    item.ConceptNameCodeSequence = Sequence([inner])
    ds = Dataset()
    ds.SOPInstanceUID = "1.2.3.9"
    ds.StudyInstanceUID = "1.2.3.7"
    ds.SeriesInstanceUID = "1.2.3.8"
    ds.PatientName = "Doe^Jane"
    ds.ReferencedImageSequence = Sequence([item, item])
    ds.add_new(0x7FE00010, "OB", b"\x00\x01" * 64)
    return ds


def encode(ds: Dataset, implicit: bool, little: bool, undefined_sq: bool = False) -> bytes:
    for elem in ds.iterall():
        if elem.VR == "SQ":
            elem.is_undefined_length = undefined_sq
            for it in elem.value:
                it.is_undefined_length_sequence_item = undefined_sq
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = implicit, little
    write_dataset(fp, ds)
    return fp.getvalue()


def top_level_boundaries(ds: Dataset, implicit: bool, little: bool, undefined: bool) -> set[int]:
    out, pos = {0}, 0
    for elem in ds:
        one = Dataset()
        one.add(elem)
        pos += len(encode(one, implicit, little, undefined))
        out.add(pos)
    return out


ENCODINGS = [
    (ImplicitVRLittleEndian, True, True),
    (ExplicitVRLittleEndian, False, True),
    (ExplicitVRBigEndian, False, False),
]


@pytest.mark.parametrize("ts,implicit,little", ENCODINGS)
@pytest.mark.parametrize("undefined", [False, True])
def test_nested_sequences_and_every_truncation(
    ts: str, implicit: bool, little: bool, undefined: bool
) -> None:
    ds = nested()
    data = encode(ds, implicit, little, undefined)
    uids = walk_dataset(data, ts)
    assert (uids.study, uids.series, uids.sop_instance) == ("1.2.3.7", "1.2.3.8", "1.2.3.9")
    boundaries = top_level_boundaries(ds, implicit, little, undefined)
    assert len(data) in boundaries
    for cut in range(1, len(data)):
        if cut in boundaries:
            walk_dataset(data[:cut], ts)  # a shorter but whole data set
        else:
            with pytest.raises(MalformedDatasetError):
                walk_dataset(data[:cut], ts)
    with pytest.raises(MalformedDatasetError):
        walk_dataset(data + b"\x08\x00", ts)  # trailing bytes


def test_encapsulated_pixel_data_and_its_truncation() -> None:
    ds = nested()
    del ds.PixelData
    data = encode(ds, False, True)
    frame = b"\xff\xd8" + b"\x11" * 100 + b"\xff\xd9"
    pixel = (
        b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff"
        + b"\xfe\xff\x00\xe0\x00\x00\x00\x00"  # empty basic offset table
        + b"\xfe\xff\x00\xe0"
        + len(frame).to_bytes(4, "little")
        + frame
        + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    )
    assert walk_dataset(data + pixel, JPEGBaseline8Bit).sop_instance == "1.2.3.9"
    for cut in range(len(data) + 1, len(data) + len(pixel)):
        with pytest.raises(MalformedDatasetError):
            walk_dataset((data + pixel)[:cut], JPEGBaseline8Bit)


def test_undefined_length_un_holds_an_implicit_sequence() -> None:
    item = b"\x08\x00\x50\x00\x04\x00\x00\x00ACC1"  # implicit VR item body
    un = (
        b"\x09\x00\x10\x10UN\x00\x00\xff\xff\xff\xff"
        + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
        + item
        + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
        + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    )
    data = encode(nested(), False, True)
    walk_dataset(data + un, ExplicitVRLittleEndian)
    with pytest.raises(MalformedDatasetError):
        walk_dataset(data + un[:-8], ExplicitVRLittleEndian)


@pytest.mark.parametrize(
    "tail,why",
    [
        (b"\xfe\xff\x0d\xe0\x00\x00\x00\x00", "stray item delimiter"),
        (b"\x09\x00\x10\x10ZZ\x02\x00ab", "unknown VR"),
        (b"\x09\x00\x10\x10LO\xff\xff", "short value longer than the data"),
        (b"\x09\x00\x10\x10UT\x00\x00\xff\xff\xff\xff", "undefined length on text"),
    ],
)
def test_broken_encodings_refused(tail: bytes, why: str) -> None:
    data = encode(nested(), False, True)
    with pytest.raises(MalformedDatasetError):
        walk_dataset(data + tail, ExplicitVRLittleEndian)


def test_deep_nesting_refused_not_a_crash() -> None:
    ds = Dataset()
    ds.SOPInstanceUID = "1.2"
    cur = ds
    for _ in range(40):
        child = Dataset()
        cur.ReferencedImageSequence = Sequence([child])
        cur = child
    with pytest.raises(MalformedDatasetError, match="nested"):
        walk_dataset(encode(ds, False, True, undefined_sq=True), ExplicitVRLittleEndian)


def test_deflated() -> None:
    raw = encode(nested(), False, True)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = packer.compress(raw) + packer.flush()
    assert walk_dataset(deflated, DeflatedExplicitVRLittleEndian).study == "1.2.3.7"
    with pytest.raises(MalformedDatasetError):
        walk_dataset(b"not deflate data", DeflatedExplicitVRLittleEndian)


def test_implicit_vr_under_an_explicit_syntax_is_read_as_found() -> None:
    data = encode(nested(), True, True)
    uids = walk_dataset(data, ExplicitVRLittleEndian)
    assert uids.vr_mismatch and uids.sop_instance == "1.2.3.9"
    assert not walk_dataset(data, ImplicitVRLittleEndian).vr_mismatch
