"""The shared strict YAML reader (node and vendor config): duplicate keys, depth, size (#16)."""

from __future__ import annotations

from pathlib import Path

import pytest

from secure_infer.vendor.cli import vendor_main
from secure_infer.vendor.config import VendorConfigError, load_vendor_config
from secure_infer.yamlconfig import MAX_DEPTH, YAMLStrictError, safe_load_strict

ROOT = Path(__file__).resolve().parents[2]


def test_duplicate_keys_at_any_depth() -> None:
    first = r"line 3, column 1: duplicate key 'a' \(first at line 1\)"
    with pytest.raises(YAMLStrictError, match=first):
        safe_load_strict("a: 1\nb: 2\na: 3\n")
    with pytest.raises(YAMLStrictError, match=r"line 1, column 26: duplicate key 'y'"):
        safe_load_strict("x: [{y: 1, z: 2}, {y: 1, y: 2}]\n")
    # two spellings of one key are one key
    with pytest.raises(YAMLStrictError, match="duplicate key True"):
        safe_load_strict("true: 1\nyes: 2\n")


def test_merge_keys_still_work() -> None:
    data = safe_load_strict("base: &b {x: 1, y: 1}\nd:\n  <<: *b\n  x: 2\n")
    assert data["d"] == {"x": 2, "y": 1}


def test_depth_limit() -> None:
    ok = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert safe_load_strict(ok) is not None
    deeper = "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)
    with pytest.raises(YAMLStrictError, match=f"nested more than {MAX_DEPTH} levels deep"):
        safe_load_strict(deeper)
    with pytest.raises(YAMLStrictError, match="nested more than"):
        safe_load_strict("{a: " * 5000 + "1" + "}" * 5000)


def test_vendor_config_refuses_duplicate_keys(tmp_path: Path) -> None:
    example = (ROOT / "config" / "vendor.example.yaml").read_text()
    p = tmp_path / "vendor.yaml"
    p.write_text(example + "\nlisten:\n  port: 1\n")
    with pytest.raises(VendorConfigError) as info:
        load_vendor_config(p)
    (line,) = info.value.problems
    assert "duplicate key 'listen' (first at line " in line


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("listen: {port: 1}\nlisten: {port: 2}\n", "line 2, column 1: duplicate key 'listen'"),
        ("listen: " + "[" * 5000 + "]" * 5000 + "\n", "nested more than 64 levels deep"),
        ("# " + "x" * (2 << 20) + "\n", "file is larger than 1 MiB"),
    ],
)
def test_vendor_serve_exits_2_on_hostile_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    p = tmp_path / "vendor.yaml"
    p.write_text(text)
    assert vendor_main(["serve", "--config", str(p)]) == 2
    captured = capsys.readouterr()
    assert expected in captured.out + captured.err
    assert "Traceback" not in captured.out + captured.err
