"""Engine unit tests: UIDs, dates, ages, scrubbing, private tags, groups, pixels, events."""

from __future__ import annotations

import copy
import datetime as dt
import io
from typing import Any

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from node.deid import (
    BurnedInPolicy,
    BurnedInRule,
    Deidentifier,
    DeidKeys,
    DeviceMask,
    PhiScrubber,
    SafePrivateAllowList,
    SafePrivateTag,
    UidMapper,
    date_shift_days,
)
from node.deid.temporal import cap_age, shift_da, shift_dt

KEYS = DeidKeys(b"k" * 32, b"d" * 32)


def make_ct(**extra: Any) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.3.4.20200101.1"
    ds.StudyInstanceUID = "1.2.3.4.20200101"
    ds.SeriesInstanceUID = "1.2.3.4.20200101.9"
    ds.FrameOfReferenceUID = "1.2.3.4.5"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "P123"
    ds.PatientBirthDate = "19300101"
    ds.PatientAge = "095Y"
    ds.StudyDate = "20200101"
    ds.StudyTime = "101010"
    ds.AcquisitionDateTime = "20200102030405.123+0100"
    ds.Modality = "CT"
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.arange(16, dtype=np.uint16).tobytes()
    for k, v in extra.items():
        setattr(ds, k, v)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def roundtrip(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> Dataset:
    ds.file_meta.TransferSyntaxUID = syntax
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


# ---------------------------------------------------------------- keyed derivations


def test_uid_mapping_is_keyed_consistent_and_valid() -> None:
    m1, m2 = UidMapper(b"a" * 32), UidMapper(b"b" * 32)
    u = m1("1.2.3.4")
    assert u == m1("1.2.3.4") == UidMapper(b"a" * 32)("1.2.3.4")
    assert u != m2("1.2.3.4") and u != m1("1.2.3.5")
    assert u.startswith("2.25.") and len(u) <= 64 and u[5] != "0"
    assert all(p.isdigit() for p in u.split("."))


def test_date_shift_is_per_patient_and_in_range() -> None:
    a = date_shift_days(b"x" * 32, "P1")
    assert a == date_shift_days(b"x" * 32, "P1")
    assert -3650 <= a <= -365
    assert len({date_shift_days(b"x" * 32, f"P{i}") for i in range(50)}) > 40


@pytest.mark.parametrize(
    ("value", "days", "expected"),
    [
        ("20200301", -1, "20200229"),
        ("2020.03.01", -1, "20200229"),
        ("20200101-20200201", 10, "20200111-20200211"),
        ("garbage", 1, None),
        ("20201340", 1, None),
    ],
)
def test_shift_da(value: str, days: int, expected: str | None) -> None:
    assert shift_da(value, days) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20200301101010.123456+0100", "20200229101010.123456+0100"),
        ("2020", "2019"),  # year precision kept (Jan 1 - 1 day)
        ("202003", "202002"),
        ("20200301-0500", "20200229-0500"),
        ("20x", None),
    ],
)
def test_shift_dt_keeps_precision_time_and_offset(value: str, expected: str | None) -> None:
    assert shift_dt(value, -1) == expected


@given(
    st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2090, 1, 1)),
    st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2090, 1, 1)),
    st.integers(min_value=-3650, max_value=-365),
)
@settings(max_examples=200, deadline=None)
def test_shift_preserves_intervals(a: dt.date, b: dt.date, days: int) -> None:
    sa, sb = shift_da(a.strftime("%Y%m%d"), days), shift_da(b.strftime("%Y%m%d"), days)
    assert sa is not None and sb is not None
    da = dt.datetime.strptime(sa, "%Y%m%d").date()
    db = dt.datetime.strptime(sb, "%Y%m%d").date()
    assert (db - da) == (b - a)


@pytest.mark.parametrize(
    ("age", "out"),
    [
        ("095Y", "090Y"),
        ("089Y", "089Y"),
        ("090Y", "090Y"),
        ("999M", "999M"),
        ("200Y", "090Y"),
        ("1", ""),
        ("050W", "050W"),
    ],
)
def test_cap_age(age: str, out: str) -> None:
    assert cap_age(age) == out


# ---------------------------------------------------------------- scrubbing


def test_scrubber_accent_case_and_word_boundaries() -> None:
    s = PhiScrubber({"Müller", "Ann", "P123"})
    out = s.scrub("MULLER and muller met Ann; Annotation stays; id P123")
    assert "MULLER" not in out and "muller" not in out and "P123" not in out
    assert "Annotation stays" in out
    assert out.count("***") == 4


def test_scrubber_generic_patterns() -> None:
    s = PhiScrubber()
    text = (
        "seen 03/04/2021 and 2021-03-04, call (555) 123-4567, mail a.b@x.org, Dr. Who, MRN 1234567"
    )
    out = s.scrub(text)
    for leak in ("03/04/2021", "2021-03-04", "123-4567", "a.b@x.org", "Who", "1234567"):
        assert leak not in out
    assert s.scrub("CT chest 120 kVp") == "CT chest 120 kVp"


# ---------------------------------------------------------------- engine


def test_basic_profile_on_a_dataset_read_from_file() -> None:
    src = roundtrip(make_ct())
    pixel = bytes(src.PixelData)
    r = Deidentifier([], KEYS).deidentify(src)
    ds = r.dataset
    assert ds is not None and not r.blocked
    assert ds.PatientID == ds.PatientName == r.patient_pseudonym != "P123"
    assert not ds.StudyDate and "PatientAge" not in ds and not ds.get("AcquisitionDateTime")
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
    assert r.uid_map["1.2.3.4.20200101.1"] == ds.SOPInstanceUID
    assert ds.PixelData == pixel
    assert ds.LongitudinalTemporalInformationModified == "REMOVED"
    assert [i.CodeValue for i in ds.DeidentificationMethodCodeSequence] == ["113100"]
    assert r.identifiers["PatientID"] == "P123"
    assert "P123" not in repr(r)  # identifiers and uid_map are not in the repr


def test_implicit_vr_input_is_handled() -> None:
    src = roundtrip(make_ct(), ImplicitVRLittleEndian)
    r = Deidentifier(["retain_long_modified_dates"], KEYS).deidentify(src)
    assert r.dataset is not None
    assert r.dataset.StudyDate != "20200101"
    out = roundtrip(r.dataset, ImplicitVRLittleEndian)
    assert out.PatientID == r.patient_pseudonym


def test_modified_dates_and_age_cap() -> None:
    r = Deidentifier(["retain_long_modified_dates", "retain_patient_characteristics"], KEYS)
    res = r.deidentify(make_ct())
    ds = res.dataset
    assert ds is not None and res.date_shift_days is not None
    shift = res.date_shift_days
    assert ds.StudyDate == shift_da("20200101", shift)
    assert ds.AcquisitionDateTime == shift_dt("20200102030405.123+0100", shift)
    assert ds.StudyTime == "101010"
    assert ds.PatientAge == "090Y"
    assert ds.LongitudinalTemporalInformationModified == "MODIFIED"


def test_same_uid_same_replacement_in_nested_references() -> None:
    d = Deidentifier([], KEYS)
    a = d.deidentify(make_ct()).dataset
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ref.ReferencedSOPInstanceUID = "1.2.3.4.20200101.1"
    inner = Dataset()
    inner.ReferencedImageSequence = [ref]
    b_src = make_ct(SOPInstanceUID="1.2.3.4.20200101.2")
    b_src.ReferencedSeriesSequence = [inner]
    b = d.deidentify(b_src).dataset
    assert a is not None and b is not None
    nested = b.ReferencedSeriesSequence[0].ReferencedImageSequence[0]
    assert nested.ReferencedSOPInstanceUID == a.SOPInstanceUID
    assert nested.ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"  # class UIDs kept
    assert b.FrameOfReferenceUID == a.FrameOfReferenceUID


def test_private_tags_removed_unless_allow_listed() -> None:
    ds = make_ct()
    blk = ds.private_block(0x0019, "SAFE CO", create=True)
    blk.add_new(0x10, "DS", "1.5")
    blk.add_new(0x11, "LO", "Doe Jane")
    other = ds.private_block(0x0029, "OTHER CO", create=True)
    other.add_new(0x10, "LO", "Doe Jane")
    allow = SafePrivateAllowList([SafePrivateTag("SAFE CO", 0x10, 0x0019)])
    kept = Deidentifier(["retain_safe_private"], KEYS, safe_private=allow).deidentify(ds).dataset
    assert kept is not None
    private = [e for e in kept if e.tag.is_private]
    assert [str(e.value) for e in private] == ["SAFE CO", "1.5"]
    ds2 = make_ct()
    blk = ds2.private_block(0x0019, "SAFE CO", create=True)
    blk.add_new(0x10, "DS", "1.5")
    gone = Deidentifier([], KEYS, safe_private=allow).deidentify(ds2).dataset
    assert gone is not None and not [e for e in gone if e.tag.is_private]


def overlay_ds() -> Dataset:
    ds = make_ct(Manufacturer="ACME", ManufacturerModelName="M1")
    ds.add_new(0x60000010, "US", 4)
    ds.add_new(0x60000011, "US", 4)
    ds.add_new(0x60000040, "CS", "G")
    ds.add_new(0x60000050, "SS", [1, 1])
    ds.add_new(0x60000100, "US", 1)
    ds.add_new(0x60000102, "US", 0)
    ds.add_new(0x60000022, "LO", "overlay by Doe")
    ds.add_new(0x60003000, "OW", np.packbits(np.ones(16, np.uint8), bitorder="little").tobytes())
    ds.add_new(0x60004000, "LT", "drawn for Jane Doe")
    ds.add_new(0x50000005, "US", 1)  # curve group
    ds.add_new(0x50002500, "LO", "curve of Doe")
    ds.add_new(0x00091001, "LO", "x")  # private without creator
    ds.add_new(0x00080000, "UL", 4)  # group length
    ds.add_new(0x60100010, "US", 1)  # another overlay group, no data
    return ds


def test_overlays_curves_group_lengths_removed_by_basic_profile() -> None:
    ds = Deidentifier([], KEYS).deidentify(overlay_ds()).dataset
    assert ds is not None
    groups = {e.tag.group for e in ds}
    assert not groups & {0x6000, 0x6010, 0x5000, 0x0009}
    assert 0x00080000 not in ds


def test_clean_graphics_keeps_overlay_masks_it_and_scrubs_text() -> None:
    policy = BurnedInPolicy(BurnedInRule.MASK, (DeviceMask("ACME", "M1", 4, 4, ((0, 0, 4, 1),)),))
    d = Deidentifier(["clean_graphics"], KEYS, burned_in=policy)
    ds = d.deidentify(overlay_ds()).dataset
    assert ds is not None
    bits = np.unpackbits(np.frombuffer(ds[0x60003000].value, np.uint8), bitorder="little")[:16]
    assert bits.reshape(4, 4)[0].sum() == 0 and bits.reshape(4, 4)[1:].all()
    assert "Doe" not in str(ds[0x60000022].value) and "Doe" not in str(ds[0x60004000].value)
    assert "Doe" not in str(ds[0x50002500].value)


def test_burned_in_blocked_with_event_and_log(caplog: pytest.LogCaptureFixture) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    d = Deidentifier([], KEYS, on_event=lambda k, det: events.append((k, det)))
    r = d.deidentify(make_ct(BurnedInAnnotation="YES"))
    assert r.blocked and r.blocked_reason == "burned_in_annotation_yes"
    assert events and events[0][0] == "deid.blocked"
    flat = repr(events) + caplog.text
    for phi in ("Doe", "P123", "1.2.3.4"):
        assert phi not in flat
    assert "burned-in" in caplog.text
    for modality in ("US", "XC"):
        assert d.deidentify(make_ct(Modality=modality)).blocked
    assert d.deidentify(make_ct(ImageType=["DERIVED", "SECONDARY", "DOSE_INFO"])).blocked
    assert not d.deidentify(make_ct(BurnedInAnnotation="NO")).blocked
    assert events[-1][0] == "deid.deidentified"
    assert events[-1][1]["options"] == [] and "P123" not in repr(events)


def test_mask_releases_matching_device_only() -> None:
    mask = DeviceMask("ACME", "SONO", 4, 4, ((0, 0, 2, 2),))
    d = Deidentifier([], KEYS, burned_in=BurnedInPolicy(BurnedInRule.MASK, (mask,)))
    r = d.deidentify(make_ct(Modality="US", Manufacturer="acme ", ManufacturerModelName="SONO"))
    assert r.dataset is not None and r.pixels_masked
    arr = np.frombuffer(r.dataset.PixelData, np.uint16).reshape(4, 4)
    assert arr[:2, :2].sum() == 0 and (arr[2:] == np.arange(8, 16).reshape(2, 4)).all()
    assert "113101" in {i.CodeValue for i in r.dataset.DeidentificationMethodCodeSequence}
    other = d.deidentify(make_ct(Modality="US", Manufacturer="ACME", ManufacturerModelName="X"))
    assert other.blocked
    block_all = Deidentifier([], KEYS, burned_in=BurnedInPolicy(BurnedInRule.BLOCK, (mask,)))
    assert block_all.deidentify(
        make_ct(Modality="US", Manufacturer="ACME", ManufacturerModelName="SONO")
    ).blocked


def test_patient_id_without_value_gets_stable_pseudonym() -> None:
    d = Deidentifier([], KEYS)
    a = d.deidentify(make_ct(PatientID="")).dataset
    b = d.deidentify(make_ct(PatientID="")).dataset
    assert a is not None and b is not None and a.PatientID == b.PatientID != ""


# ---------------------------------------------------------------- real files (pydicom test data)


@pytest.mark.parametrize("name", ["MR_small_bigendian.dcm", "MR_small_RLE.dcm", "CT_small.dcm"])
def test_real_files_pixels_byte_identical_and_identity_gone(name: str) -> None:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    assert path is not None
    src = pydicom.dcmread(path)
    before = (str(src.PatientName), str(src.PatientID), src.StudyInstanceUID, bytes(src.PixelData))
    r = Deidentifier(["retain_long_modified_dates"], KEYS).deidentify(src)
    assert r.dataset is not None
    buf = io.BytesIO()
    r.dataset.save_as(buf, enforce_file_format=True)
    out = pydicom.dcmread(io.BytesIO(buf.getvalue()))
    assert out.file_meta.TransferSyntaxUID == src.file_meta.TransferSyntaxUID
    assert out.PixelData == before[3]
    assert str(out.PatientName) != before[0] and out.PatientID != before[1]
    assert out.StudyInstanceUID == r.uid_map[before[2]]
    assert out.DeidentificationMethodCodeSequence[1].CodeValue == "113107"


def test_mask_on_compressed_rgb_decodes_blanks_and_stores_uncompressed() -> None:
    from pydicom.data import get_testdata_file

    path = get_testdata_file("SC_rgb_jpeg_dcmtk.dcm")
    assert path is not None
    src = pydicom.dcmread(path)
    src.Manufacturer, src.ManufacturerModelName = "ACME", "SC1"
    before = src.pixel_array.copy()
    mask = DeviceMask("ACME", "SC1", 100, 100, ((10, 20, 30, 5),))
    r = Deidentifier([], KEYS, burned_in=BurnedInPolicy(BurnedInRule.MASK, (mask,))).deidentify(src)
    assert r.dataset is not None and r.pixels_masked
    assert r.dataset.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    buf = io.BytesIO()
    r.dataset.save_as(buf, enforce_file_format=True)
    arr = pydicom.dcmread(io.BytesIO(buf.getvalue())).pixel_array
    assert not arr[20:25, 10:40].any()
    assert np.array_equal(arr[30:], before[30:])


def test_allow_rule_skips_the_burned_in_check_for_encrypted_inference() -> None:
    d = Deidentifier([], KEYS, burned_in=BurnedInPolicy(BurnedInRule.ALLOW))
    r = d.deidentify(make_ct(Modality="US", BurnedInAnnotation="YES"))
    assert not r.blocked and not r.pixels_masked


@given(
    family=st.from_regex(r"Zq[a-z]{3,8}", fullmatch=True),
    given_name=st.from_regex(r"Xv[a-z]{2,6}", fullmatch=True),
    pid=st.from_regex(r"[A-Z]{2}[0-9]{3,9}", fullmatch=True),
    case=st.sampled_from([str.upper, str.lower, str.title]),
)
@settings(max_examples=60, deadline=None)
def test_planted_names_and_ids_never_survive(
    family: str, given_name: str, pid: str, case: Any
) -> None:
    ds = make_ct(
        PatientName=f"{family}^{given_name}",
        PatientID=pid,
        OtherPatientNames=case(f"{family}^{given_name}"),
        ReferringPhysicianName=f"{given_name}^{family}",
        StudyDescription=f"scan of {case(family)} ({pid})",
        ImageComments=f"{case(given_name)} {case(family)} id {pid}",
        ProtocolName=f"protocol {case(family)}",
    )
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator = "1", "99X"
    code.CodeMeaning = f"for {case(given_name)}"
    ds.ProcedureCodeSequence = [code]
    for options in ([], ["clean_descriptors", "retain_long_modified_dates"]):
        src = roundtrip(copy.deepcopy(ds)) if options else copy.deepcopy(ds)
        out = Deidentifier(options, KEYS).deidentify(src).dataset
        assert out is not None
        text = "\n".join(str(e.value) for e in out.iterall() if e.tag != 0x7FE00010).lower()
        for leak in (family, given_name, pid):
            assert leak.lower() not in text, (options, leak)
