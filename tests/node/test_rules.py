"""Routing rules: config errors with YAML paths, matching semantics, PHI-free explanations."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset

from node.config import ConfigError, NodeConfig, load_config, parse_model
from node.config.inference import VendorPeerSection
from node.config.routes import Condition, RouteSection
from node.rules import SAFE_ATTRIBUTES, evaluate, matches, series_selected


def vendor_peer(url: str, models: list[str]) -> dict[str, Any]:
    """A vendors: entry; other required keys of VendorPeerSection (TLS file paths, owned by the
    vendor-link config) get placeholder values, so these tests do not depend on them."""
    entry: dict[str, Any] = {"url": url, "models": models}
    for name, info in VendorPeerSection.model_fields.items():
        if info.is_required() and name not in entry:
            entry[name] = f"/nonexistent/{name}"
    return entry


BASE = {
    "destinations": {
        "pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 104},
        "research": {"ae_title": "RESEARCH", "host": "127.0.0.1", "port": 105},
    },
    "vendors": {"acme": vendor_peer("https://127.0.0.1:8443", ["cxr-v2", "cxr-v1"])},
}
INFER = {"infer": {"model": "cxr-v2", "vendor": "acme", "destinations": ["pacs"]}}
NOON = datetime(2026, 11, 23, 12, 0)


def config(routes: list[dict[str, Any]], **extra: Any) -> NodeConfig:
    return parse_model({**BASE, **extra, "routes": routes}, NodeConfig, "test.yaml")


def problems(routes: list[dict[str, Any]], **extra: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config(routes, **extra)
    return info.value.problems


def cond(spec: dict[str, Any]) -> Condition:
    return Condition.model_validate(spec)


def chest_cr() -> Dataset:
    ds = Dataset()
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PID-778899"
    ds.AccessionNumber = "ACC55501"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.7777"
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Rows = 2048
    ds.PatientWeight = "72.5"
    ds.StudyDescription = ""
    return ds


# --- config errors -----------------------------------------------------------------------------


def test_unknown_keyword_named_with_path() -> None:
    lines = problems([
        {"name": "ok", "action": "discard"},
        {"name": "typo", "match": {"all": [{"attribute": "Modalty", "equals": "CR"}]},
         "action": INFER},
    ])
    assert lines == [
        "routes[1].match.all[0].attribute: unknown DICOM keyword 'Modalty';"
        " did you mean 'Modality'?"
    ]


def test_bad_regex_reported_at_load_with_path() -> None:
    lines = problems([{"name": "r", "match": {"any": [{"attribute": "Modality", "regex": "(CR"}]},
                       "action": INFER}])
    assert len(lines) == 1
    assert lines[0].startswith("routes[0].match.any[0].regex: invalid regular expression '(CR'")


def test_unknown_references_each_with_its_path() -> None:
    lines = problems([
        {"name": "a", "action": {"infer": {"model": "cxr-v3", "vendor": "acme",
                                           "destinations": ["pacs", "nowhere"]}}},
        {"name": "b", "action": {"infer": {"model": "cxr-v2", "vendor": "globex",
                                           "destinations": ["pacs"]}}},
        {"name": "c", "action": {"forward_deidentified": {"destination": "archive"}}},
    ])
    assert sorted(lines) == sorted([
        "routes[0].action.infer.model: unknown model 'cxr-v3' at vendor 'acme';"
        " known: cxr-v1, cxr-v2",
        "routes[0].action.infer.destinations[1]: unknown destination 'nowhere';"
        " known: pacs, research",
        "routes[1].action.infer.vendor: unknown vendor peer 'globex'; known: acme",
        "routes[2].action.forward_deidentified.destination: unknown destination 'archive';"
        " known: pacs, research",
    ])


def test_deid_profile_reference_and_option_names() -> None:
    lines = problems([
        {"name": "a", "action": {"forward_deidentified": {"destination": "research",
                                                          "profile": "research"}}},
        {"name": "b", "action": {"forward_deidentified": {"destination": "research",
                                                          "options": ["rtnUIDsOpt"]}}},
    ])
    assert lines == [
        "routes[0].action.forward_deidentified.profile: unknown de-identification profile"
        " 'research'; known: (none configured)",
        "routes[1].action.forward_deidentified.options[0]: must be a snake_case"
        " de-identification option such as retain_long_modified_dates, got 'rtnUIDsOpt'",
    ]


def test_sr_overrides_merge_onto_node_defaults() -> None:
    from node.config.routes import SrOptions
    from node.config.sr import SrSection

    assert set(SrOptions.model_fields) <= set(SrSection.model_fields)  # no drift
    cfg = config([{"name": "a", "action": {"infer": {**INFER["infer"], "sr": {
        "series_description": "Chest AI", "series_number": 77}}}}],
        sr={"series_description": "node default", "secondary_capture": True})
    infer = cfg.routes[0].action.infer
    assert infer is not None
    merged = infer.sr_settings(cfg.sr)
    assert (merged.series_description, merged.series_number, merged.secondary_capture) == (
        "Chest AI", 77, True)
    lines = problems([{"name": "a", "action": {"infer": {**INFER["infer"], "sr": {
        "series_description": "x" * 65}}}}])
    assert lines[0].startswith("routes[0].action.infer.sr.series_description:")


def test_references_checked_together_with_other_errors() -> None:
    lines = problems([{"name": "a", "action": {"infer": {"model": "x", "vendor": "acme",
                                                          "destinations": ["pacs"]}}}],
                     scp={"port": 0})
    assert "scp.port: must be >= 1, got 0" in lines
    assert any(line.startswith("routes[0].action.infer.model: unknown model 'x'")
               for line in lines)


def test_series_filter_validated_too() -> None:
    lines = problems([{"name": "a", "action": {"infer": {
        **INFER["infer"], "series_filter": {"attribute": "ViewPositon", "in": ["PA"]}}}}])
    assert lines[0].startswith(
        "routes[0].action.infer.series_filter.attribute: unknown DICOM keyword 'ViewPositon'"
    )


@pytest.mark.parametrize(
    ("match", "where", "text"),
    [
        ({"attribute": "Modality"}, "routes[0].match", "needs at least one of"),
        ({"attribute": "Modality", "equals": "CR", "calling_ae": "X"}, "routes[0].match",
         "needs exactly one of"),
        ({}, "routes[0].match", "needs exactly one of"),
        ({"all": [], "equals": "CR"}, "routes[0].match", "only allowed next to 'attribute'"),
        ({"attribute": "Modality", "exists": True, "equals": "CR"}, "routes[0].match",
         "'exists' cannot be combined"),
        ({"attribute": "ReferencedStudySequence", "equals": "x"}, "routes[0].match",
         "is a sequence"),
        ({"time_of_day": {"from": "25:00", "to": "06:00"}}, "routes[0].match.time_of_day.from",
         "must be a time of day"),
        ({"time_of_day": {"from": "08:00", "to": "08:00"}}, "routes[0].match.time_of_day",
         "empty time range"),
        ({"calling_ae": {"in": ["A"], "regex": "B"}}, "routes[0].match.calling_ae",
         "needs exactly one of equals, in, regex"),
        ({"attribute": "Rows", "gt": "many"}, "routes[0].match.gt", "valid number"),
        ({"nope": 1}, "routes[0].match.nope", "unknown key"),
    ],
)
def test_condition_shape_errors(match: dict[str, Any], where: str, text: str) -> None:
    lines = problems([{"name": "r", "match": match, "action": INFER}])
    assert any(line.startswith(where + ":") and text in line for line in lines), lines


def test_action_and_rule_errors() -> None:
    assert problems([{"name": "a", "action": {}}])[0].startswith(
        "routes[0].action: needs exactly one of infer, forward_deidentified, discard; found none")
    assert problems([{"name": "a", "action": {**INFER, "discard": {}}}])[0].startswith(
        "routes[0].action: needs exactly one of")
    assert problems([{"name": "a", "action": "discard", "continue": True}])[0].startswith(
        "routes[0]: 'continue: true' cannot be used with discard")
    assert problems([{"name": "a", "action": "discard"}, {"name": "a", "action": "discard"}]) == [
        "routes[1].name: rule name 'a' is already used by an earlier rule"]
    lines = problems([{"name": "a", "action": {"infer": {"model": "cxr-v2", "vendor": "acme",
                                                         "destinations": []}}}])
    assert lines[0].startswith("routes[0].action.infer.destinations:")


def test_yaml_unquoted_times_work(tmp_path: Path) -> None:
    # YAML 1.1 reads unquoted 22:00 as the base-60 integer 1320 (= minutes since midnight)
    # (BASE without its routes: a second top-level `routes:` is a duplicate key, refused)
    text = yaml.safe_dump({k: v for k, v in BASE.items() if k != "routes"}) + (
        "routes:\n  - name: night\n    match: {time_of_day: {from: 22:00, to: 6:30}}\n"
        "    action: discard\n"
    )
    p = tmp_path / "node.yaml"
    p.write_text(text)
    cfg = load_config(p)
    tr = cfg.routes[0].match.time_of_day
    assert tr is not None and tr.describe() == "22:00-06:30"


def test_example_config_has_working_routes() -> None:
    cfg = load_config(Path(__file__).resolve().parents[2] / "config" / "node.example.yaml")
    assert cfg.routes, "the example documents routes"
    result = evaluate(cfg.routes, chest_cr(), "PACS", NOON)
    assert result.matches and result.matches[0].action.kind == "infer"


# --- matching semantics ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"attribute": "Modality", "equals": "CR"}, True),
        ({"attribute": "Modality", "equals": "cr"}, False),
        ({"attribute": "Modality", "equals": "cr", "ignore_case": True}, True),
        ({"attribute": "Modality", "in": ["DX", "CR"]}, True),
        ({"attribute": "Modality", "in": ["CT"]}, False),
        ({"attribute": "BodyPartExamined", "regex": "^CH"}, True),
        ({"attribute": "BodyPartExamined", "regex": "EST"}, True),  # searched
        ({"attribute": "BodyPartExamined", "regex": "^EST"}, False),
        ({"attribute": "BodyPartExamined", "regex": "^chest$", "ignore_case": True}, True),
        ({"attribute": "Rows", "ge": 2048}, True),
        ({"attribute": "Rows", "gt": 2048}, False),
        ({"attribute": "Rows", "ge": 1000, "lt": 4096}, True),
        ({"attribute": "Rows", "equals": 2048}, True),  # numeric compare of IS
        ({"attribute": "PatientWeight", "le": 72.5}, True),  # DS
        ({"attribute": "PatientWeight", "lt": 72.5}, False),
        ({"attribute": "Modality", "gt": 1}, False),  # not a number: false, not an error
        ({"attribute": "ImageType", "equals": "PRIMARY"}, True),  # any value of a multi-value
        ({"attribute": "ImageType", "equals": "DERIVED"}, False),
        ({"attribute": "Modality", "exists": True}, True),
        ({"attribute": "SeriesDescription", "exists": False}, True),  # absent
        ({"attribute": "StudyDescription", "exists": False}, True),  # present but empty
        ({"attribute": "StudyDescription", "regex": ".*"}, False),  # empty: tests are false
        ({"not": {"attribute": "Modality", "equals": "CT"}}, True),
        ({"all": []}, True),
        ({"any": []}, False),
        ({"any": [{"attribute": "Modality", "equals": "CT"},
                  {"attribute": "ViewPosition", "in": ["PA", "AP"]}]}, True),
        ({"calling_ae": "MOD1"}, True),
        ({"calling_ae": {"in": ["A", "MOD1"]}}, True),
        ({"calling_ae": {"regex": "^CT"}}, False),
        ({"time_of_day": {"from": "08:00", "to": "12:00"}}, False),  # end exclusive
        ({"time_of_day": {"from": "12:00", "to": "13:00"}}, True),  # start inclusive
        ({"time_of_day": {"from": "22:00", "to": "12:30"}}, True),  # across midnight
        ({"time_of_day": {"from": "22:00", "to": "11:59"}}, False),
    ],
)
def test_condition_semantics(spec: dict[str, Any], expected: bool) -> None:
    ds = chest_cr()
    assert matches(cond(spec), ds, "MOD1", NOON)[0] is expected
    # a plain keyword -> value mapping gives the same answer as the Dataset
    as_dict = {e.keyword: e.value for e in ds}
    assert matches(cond(spec), as_dict, "MOD1", NOON)[0] is expected


def test_calling_ae_unknown_is_false() -> None:
    ok, lines = matches(cond({"calling_ae": "MOD1"}), chest_cr(), None, NOON)
    assert not ok and "unknown" in lines[0]


def test_aware_time_converted_to_local(monkeypatch: pytest.MonkeyPatch) -> None:
    import time as _time

    monkeypatch.setenv("TZ", "Europe/Berlin")
    _time.tzset()
    try:
        from datetime import UTC

        utc_11 = datetime(2026, 1, 15, 11, 30, tzinfo=UTC)  # 12:30 in Berlin (CET)
        c = cond({"time_of_day": {"from": "12:00", "to": "13:00"}})
        assert matches(c, {}, None, utc_11)[0]
    finally:
        monkeypatch.delenv("TZ")
        _time.tzset()


def _route(name: str, modality: str, cont: bool = False, action: Any = None) -> dict[str, Any]:
    return {"name": name, "match": {"attribute": "Modality", "equals": modality},
            "action": action or INFER, "continue": cont}


def test_first_match_stops() -> None:
    cfg = config([_route("a", "CT"), _route("b", "CR"), _route("c", "CR")])
    result = evaluate(cfg.routes, chest_cr(), None, NOON)
    assert [m.name for m in result.matches] == ["b"]
    assert "stop: first match" in result.describe()


def test_continue_gives_all_match_and_discard_stops() -> None:
    forward = {"forward_deidentified": {"destination": "research",
                                        "options": ["retain_long_modified_dates"]}}
    cfg = config([
        _route("infer", "CR", cont=True),
        {"name": "off", "enabled": False, "match": {"all": []}, "action": "discard"},
        _route("research", "CR", cont=True, action=forward),
        _route("drop", "CR", action="discard"),
        _route("never", "CR"),
    ])
    result = evaluate(cfg.routes, chest_cr(), None, NOON)
    assert [m.name for m in result.matches] == ["infer", "research", "drop"]
    assert [a.kind for a in result.actions] == ["infer", "forward_deidentified"]
    assert result.discarded
    text = result.describe()
    assert "rule 'off' (routes[1]): disabled, skipped" in text
    assert "routes[4]" not in text


def test_no_rule_matched() -> None:
    cfg = config([_route("a", "CT")])
    result = evaluate(cfg.routes, chest_cr(), None, NOON)
    assert result.matches == () and result.actions == () and not result.discarded
    assert "no rule matched" in result.describe()


def test_series_filter() -> None:
    cfg = config([{"name": "frontal", "match": {"attribute": "Modality", "in": ["CR", "DX"]},
                   "action": {"infer": {**INFER["infer"], "series_filter": {"all": [
                       {"attribute": "ViewPosition", "in": ["PA", "AP"]},
                       {"not": {"attribute": "ImageType", "equals": "DERIVED"}}]}}}}])
    action = cfg.routes[0].action
    assert series_selected(action, chest_cr())[0]
    lateral = chest_cr()
    lateral.ViewPosition = "LL"
    assert not series_selected(action, lateral)[0]
    plain = config([_route("a", "CR")]).routes[0].action
    assert series_selected(plain, lateral)[0]


# --- no PHI in explanations --------------------------------------------------------------------


def test_explanations_hide_phi_values_and_operands() -> None:
    ds = chest_cr()
    cfg = config([{"name": "phi", "match": {"all": [
        {"attribute": "PatientID", "equals": "PID-778899"},
        {"attribute": "PatientName", "regex": "^Doe"},
        {"attribute": "AccessionNumber", "in": ["ACC55501", "ACC0"]},
        {"attribute": "StudyInstanceUID", "exists": True},
        {"attribute": "Modality", "equals": "CR"},
    ]}, "action": INFER}])
    text = evaluate(cfg.routes, ds, None, NOON).describe()
    for secret in ("PID-778899", "Doe", "Jane", "ACC55501", "ACC0", "1.2.826.0.1.3680043"):
        assert secret not in text
    assert "PatientID equals <hidden>: yes (PatientID = <hidden>)" in text
    assert "Modality equals CR: yes (Modality = 'CR')" in text


@settings(max_examples=60, deadline=None)
@given(value=st.text(min_size=1, max_size=20).map(lambda s: f"\u00a7{s}\u00a7"),  # \u00a7: never
       # in the explanation template, so any occurrence would be a leak
       keyword=st.sampled_from(["PatientName", "PatientID", "AccessionNumber",
                                "InstitutionName", "StudyDescription", "ReferringPhysicianName"]))
def test_property_unsafe_values_never_shown(value: str, keyword: str) -> None:
    assert keyword not in SAFE_ATTRIBUTES
    c = cond({"any": [{"attribute": keyword, "equals": value},
                      {"attribute": keyword, "regex": "^" + "x" * 3},
                      {"attribute": keyword, "in": [value, value + "1"]}]})
    _, lines = matches(c, {keyword: value}, None, NOON)
    assert "\u00a7" not in "\n".join(lines)


# --- property tests ----------------------------------------------------------------------------

MODALITIES = ["CR", "DX", "CT", "MR"]

leaf = st.one_of(
    st.lists(st.sampled_from(MODALITIES), unique=True).map(
        lambda s: ({"attribute": "Modality", "in": s}, lambda d, s=s: d["Modality"] in s)),
    st.integers(0, 4096).map(
        lambda k: ({"attribute": "Rows", "ge": k}, lambda d, k=k: d["Rows"] >= k)),
    st.booleans().map(
        lambda b: ({"attribute": "ViewPosition", "exists": b},
                   lambda d, b=b: ("ViewPosition" in d) == b)),
)


def _combine(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    lists = st.lists(children, max_size=3)
    return st.one_of(
        lists.map(lambda cs: ({"all": [c[0] for c in cs]},
                              lambda d, cs=cs: all(c[1](d) for c in cs))),
        lists.map(lambda cs: ({"any": [c[0] for c in cs]},
                              lambda d, cs=cs: any(c[1](d) for c in cs))),
        children.map(lambda c: ({"not": c[0]}, lambda d, c=c: not c[1](d))),
    )


trees = st.recursive(leaf, _combine, max_leaves=8)
datasets = st.fixed_dictionaries(
    {"Modality": st.sampled_from(MODALITIES), "Rows": st.integers(0, 4096)},
    optional={"ViewPosition": st.sampled_from(["PA", "AP", "LL"])},
)


@settings(max_examples=150, deadline=None)
@given(tree=trees, data=datasets)
def test_property_condition_tree_matches_oracle(tree: Any, data: dict[str, Any]) -> None:
    spec, oracle = tree
    ok, lines = matches(cond(spec), data, None, NOON)
    assert ok is oracle(data)
    assert lines  # always explained


@settings(max_examples=200, deadline=None)
@given(start=st.integers(0, 1439), end=st.integers(0, 1440), minute=st.integers(0, 1439))
def test_property_time_range_across_midnight(start: int, end: int, minute: int) -> None:
    if start == end % 1440:
        return
    c = cond({"time_of_day": {"from": f"{start // 60:02d}:{start % 60:02d}",
                              "to": f"{end // 60:02d}:{end % 60:02d}"}})
    when = datetime(2026, 1, 1, minute // 60, minute % 60)
    # walk the clock from 'from' towards 'to': inside iff reached before 'to'
    inside = (minute - start) % 1440 < (end - start) % 1440 or (end == 1440 and minute >= start)
    assert matches(c, {}, None, when)[0] is inside


@settings(max_examples=100, deadline=None)
@given(rules=st.lists(st.tuples(st.sampled_from(MODALITIES), st.booleans()), min_size=1,
                      max_size=6),
       modality=st.sampled_from(MODALITIES))
def test_property_first_match_and_continue(rules: list[tuple[str, bool]], modality: str) -> None:
    routes = tuple(
        RouteSection.model_validate(
            {"name": f"r{i}", "match": {"attribute": "Modality", "equals": m},
             "action": INFER, "continue": c})
        for i, (m, c) in enumerate(rules))
    expected = []
    for i, (m, c) in enumerate(rules):
        if m == modality:
            expected.append(f"r{i}")
            if not c:
                break
    result = evaluate(routes, {"Modality": modality}, None, NOON)
    assert [m.name for m in result.matches] == expected


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 3000) | st.floats(allow_nan=False)
    | st.sampled_from(["CR", "Modality", "Modalty", "(", "22:00", "all", "",
                       "ReferencedStudySequence"]),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["all", "any", "not", "attribute", "equals", "in", "regex",
                                       "lt", "ge", "exists", "calling_ae", "time_of_day",
                                       "from", "to", "ignore_case", "bogus"]), inner, max_size=4),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(match=json_values)
def test_property_any_yaml_is_a_config_error_or_valid(match: Any) -> None:
    """Whatever an admin writes under 'match', loading ends in a path-named ConfigError or a
    valid rule that evaluates without raising."""
    try:
        cfg = config([{"name": "fuzz", "match": match, "action": "discard"}])
    except ConfigError as exc:
        assert all(line.startswith("routes") for line in exc.problems), exc.problems
        return
    evaluate(cfg.routes, chest_cr(), "MOD1", NOON)
