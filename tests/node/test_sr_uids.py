"""Keyed deterministic UIDs and the outputs JSON loader (fast, property-based)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.uid import UID

from node.sr import SrError, derive_uid, device_uid, load_outputs
from node.sr.uids import ResultUids

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
