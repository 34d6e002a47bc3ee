"""Keyed deterministic UIDs and the outputs JSON loader (fast, property-based)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.uid import UID, Comprehensive3DSRStorage

from node.sr import SrError, derive_uid, device_uid, load_outputs
from node.sr.revisions import Revision, revision_of
from node.sr.uids import ResultUids, coverage_digest

KEY = b"0123456789abcdef0123456789abcdef"
text = st.text(min_size=0, max_size=80)


@settings(max_examples=100, deadline=None)
@given(text, text, text)
def test_derived_uids_are_valid_dicom_uids(study: str, model: str, version: str) -> None:
    uids = ResultUids(KEY, study, model, version)
    all_uids = [uids.sr_instance, uids.sr_series, uids.sc_instance, uids.sc_series]
    all_uids.append(uids.tracking("label", None))
    all_uids.append(uids.tracking("label", "1.2.3"))
    for uid in all_uids:
        assert UID(uid).is_valid, uid
        assert len(uid) <= 64 and uid.startswith("2.25.")
        # RFC 9562 version 8 / variant bits
        n = int(uid[5:])
        assert (n >> 76) & 0xF == 8 and (n >> 62) & 0x3 == 0b10
    assert len(set(all_uids)) == len(all_uids)
    assert UID(device_uid("m", model, "n", version)).is_valid


@given(text, text)
def test_parts_are_separated_not_concatenated(a: str, b: str) -> None:
    # ("ab", "c") and ("a", "bc") must not collide
    if "\x00" in a + b:
        return
    assert derive_uid(KEY, "p", a + "x", b) != derive_uid(KEY, "p", a, "x" + b)


def test_uids_need_the_key() -> None:
    assert derive_uid(KEY, "sr", "1.2.3") == derive_uid(KEY, "sr", "1.2.3")
    assert derive_uid(KEY, "sr", "1.2.3") != derive_uid(KEY[::-1], "sr", "1.2.3")
    assert derive_uid(KEY, "sr", "1.2.3") != derive_uid(KEY, "sc", "1.2.3")
    with pytest.raises(ValueError, match="at least 16 bytes"):
        derive_uid(b"short", "sr", "1.2.3")


def test_outputs_json_errors_never_echo_image_uids(tmp_path: Path) -> None:
    p = tmp_path / "o.json"
    uid = "1.2.826.0.1.3680043.8.498.4242"
    p.write_text(json.dumps({"study": {"a": 0.1}, "images": {uid: {"b": "not a number"}}}))
    with pytest.raises(SrError) as exc:
        load_outputs(p)
    assert "images.<image>.b" in str(exc.value)
    assert uid not in str(exc.value)
    with pytest.raises(SrError, match="file not found"):
        load_outputs(tmp_path / "missing.json")
    p.write_text(json.dumps({"study": {"a": 0.5}, "images": {uid: {"b": 0.25}}}))
    out = load_outputs(p)
    assert out.study == {"a": 0.5} and out.images == {uid: {"b": 0.25}}


# ---------------------------------------------------------------- amended results (issue #16)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.from_regex(r"1\.2\.[1-9][0-9]{0,8}", fullmatch=True), min_size=1, max_size=8))
def test_instance_uids_follow_the_covered_images_series_uids_do_not(sources: list[str]) -> None:
    base = ResultUids(KEY, "1.2.3", "m", "1.0", sources)
    # same set in another order, with repeats: a resend, same UIDs
    again = ResultUids(KEY, "1.2.3", "m", "1.0", [*reversed(sources), sources[0]])
    assert (again.sr_instance, again.sc_instance) == (base.sr_instance, base.sc_instance)
    # one more image: an amended result, new instance UIDs in the same series
    more = ResultUids(KEY, "1.2.3", "m", "1.0", [*sources, "9.9.9"])
    assert more.sr_instance != base.sr_instance and more.sc_instance != base.sc_instance
    assert (more.sr_series, more.sc_series) == (base.sr_series, base.sc_series)
    assert more.tracking("label", "1.2.3") == base.tracking("label", "1.2.3")
    # the coverage is keyed like everything else
    other_key = ResultUids(KEY[::-1], "1.2.3", "m", "1.0", sources)
    assert other_key.sr_instance != base.sr_instance
    assert coverage_digest(sources) == coverage_digest(sorted(set(sources)))


def _sr(series: str, instance: str, number: int, preds: tuple[Dataset, ...] = ()) -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3", series
    ds.SOPClassUID, ds.SOPInstanceUID = Comprehensive3DSRStorage, instance
    ds.InstanceNumber = number
    if preds:
        item = Dataset()
        item.StudyInstanceUID = "1.2.3"
        ser = Dataset()
        ser.SeriesInstanceUID = series
        refs = []
        for p in preds:
            ref = Dataset()
            ref.ReferencedSOPClassUID = p.SOPClassUID
            ref.ReferencedSOPInstanceUID = p.SOPInstanceUID
            refs.append(ref)
        ser.ReferencedSOPSequence = refs
        item.ReferencedSeriesSequence = [ser]
        ds.PredecessorDocumentsSequence = [item]
    return ds


def test_revision_chain_names_every_earlier_version_and_a_resend_is_the_same_document() -> None:
    assert revision_of("9.1", "9.1.1", []) == Revision(1, ())
    r1 = _sr("9.1", "9.1.1", 1)
    other_series = _sr("9.2", "9.2.1", 7)  # another model version's SR: not of this lineage
    sc = _sr("9.1", "9.1.5", 4)
    sc.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # a summary image is no predecessor
    rev2 = revision_of("9.1", "9.1.2", [r1, other_series, sc])
    assert rev2.number == 2 and rev2.amended
    assert [
        (p.StudyInstanceUID, p.SeriesInstanceUID, p.SOPClassUID, p.SOPInstanceUID)
        for p in rev2.predecessors
    ] == [("1.2.3", "9.1", Comprehensive3DSRStorage, "9.1.1")]
    r2 = _sr("9.1", "9.1.2", 2, (r1,))
    # a third revision supersedes both earlier ones (whether or not r1's file is still there)
    for earlier in ([r1, r2], [r2]):
        rev3 = revision_of("9.1", "9.1.3", earlier)
        assert rev3.number == 3
        assert [p.SOPInstanceUID for p in rev3.predecessors] == ["9.1.1", "9.1.2"]
    # rebuilding revision 2 (crash-resend) gives the same document: its number, its predecessors
    again = revision_of("9.1", "9.1.2", [r1, r2])
    assert again.number == 2 and [p.SOPInstanceUID for p in again.predecessors] == ["9.1.1"]
    # the same coverage as the first result (the late file was a resend of a known image)
    assert revision_of("9.1", "9.1.1", [r1]) == Revision(1, ())
