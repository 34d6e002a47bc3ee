"""Table E.1-1 compilation: every row resolved, options override, combined codes resolved."""

from __future__ import annotations

import pytest

from node.deid import KNOWN_NAMES, OptionError, compile_profile, parse_options
from node.deid.table import table_rows


def test_table_has_all_rows_and_columns() -> None:
    rows = table_rows()
    assert len(rows) == 621
    assert all("basicProfile" in r and "id" in r for r in rows)


def test_basic_profile_actions() -> None:
    p = compile_profile(parse_options([]))
    assert p.action_for(0x00100010) == "Z"  # Patient's Name
    assert p.action_for(0x00100020) == "D"  # Patient ID: Z/D -> D (in standard IODs)
    assert p.action_for(0x0020000D) == "U"  # Study Instance UID
    assert p.action_for(0x00080018) == "U"
    assert p.action_for(0x00081030) == "X"  # Study Description
    assert p.action_for(0x00080080) == "Z"  # Institution Name: X/Z/D -> Z
    assert p.action_for(0x00081140) == "K"  # Referenced Image Seq: X/Z/U* -> keep + map UIDs
    assert p.action_for(0x0040A730) == "D"  # Content Sequence
    assert p.action_for(0x00101010) == "X"  # Patient's Age
    assert p.action_for(0x00080016) is None  # SOP Class UID: not listed
    assert p.private == "X" and p.curve == "X" and p.overlay_data == "X"


def test_options_override_their_columns() -> None:
    p = compile_profile(parse_options((*KNOWN_NAMES[:-4], "clean_descriptors")))
    assert p.action_for(0x0020000D) == "K"  # retain_uids
    assert p.action_for(0x00181000) == "K"  # Device Serial Number, retain_device_identity
    assert p.action_for(0x00080080) == "K"  # Institution Name, retain_institution_identity
    assert p.action_for(0x00101010) == "K"  # Patient's Age, retain_patient_characteristics
    assert p.action_for(0x00080020) == "K"  # Study Date, retain_long_full_dates
    assert p.action_for(0x00081030) == "C"  # Study Description, clean_descriptors
    assert p.private == "C"
    m = compile_profile(parse_options(["retain_long_modified_dates", "clean_graphics"]))
    assert m.action_for(0x00080020) == "C"
    assert m.overlay_data == "C" and m.curve == "C"
    s = compile_profile(parse_options(["clean_structured_content"]))
    assert s.action_for(0x0040A730) == "C"


def test_retain_beats_clean_when_both_apply() -> None:
    # Allergies: rtnPatCharsOpt C and cleanDescOpt C; Station AE Title: rtnDevIdOpt C
    p = compile_profile(parse_options(["clean_descriptors", "retain_device_identity"]))
    assert p.action_for(0x00080055) == "C"


def test_compiled_once_per_option_set() -> None:
    a = compile_profile(parse_options(["retain_uids"]))
    assert compile_profile(parse_options(["retain_uids"])) is a


def test_unknown_option_lists_known_ones() -> None:
    with pytest.raises(OptionError) as info:
        parse_options(["retain_everything"])
    msg = str(info.value)
    assert "'retain_everything'" in msg
    for name in KNOWN_NAMES:
        assert name in msg


def test_full_and_modified_dates_are_exclusive() -> None:
    with pytest.raises(OptionError, match="mutually exclusive"):
        parse_options(["retain_long_full_dates", "retain_long_modified_dates"])
