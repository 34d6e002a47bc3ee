"""Config loading: every problem reported with its YAML path; examples load."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.cli import main
from node.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "node.yaml"
    p.write_text(text)
    return p


def test_example_config_loads() -> None:
    cfg = load_config(ROOT / "config" / "node.example.yaml")
    assert cfg.scp.ae_title


def test_all_errors_reported_with_paths(tmp_path: Path) -> None:
    p = write(tmp_path, "scp:\n  port: 70000\n  ae_tilte: X\ncompletion:\n  quiet_seconds: -1\n")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    problems = info.value.problems
    assert "scp.port: must be <= 65535, got 70000" in problems
    assert "scp.ae_tilte: unknown key" in problems
    assert any(line.startswith("completion.quiet_seconds: must be > 0") for line in problems)
    assert len(problems) == 3


def test_broken_yaml_names_line(tmp_path: Path) -> None:
    p = write(tmp_path, "scp:\n  port: [1,\n")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert "not valid YAML at line" in info.value.problems[0]


def test_bad_ae_title(tmp_path: Path) -> None:
    p = write(tmp_path, "scp:\n  ae_title: 'WAY_TOO_LONG_AE_TITLE_X'\n")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert info.value.problems[0].startswith("scp.ae_title: must be a DICOM AE title")


def test_config_is_immutable() -> None:
    cfg = load_config(ROOT / "config" / "node.example.yaml")
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError
        cfg.scp.port = 1  # type: ignore[misc]


def test_cli_config_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the example is valid; only the vendor certificates it names are absent on this machine
    assert main(["config", "check", str(ROOT / "config" / "node.example.yaml")]) == 2
    problems = [ln.strip() for ln in capsys.readouterr().out.splitlines()[1:]]
    assert problems and all(p.startswith("vendors.acme.") for p in problems)
    assert all(p.endswith(": no such file") for p in problems)
    bad = write(tmp_path, "scp:\n  port: 0\nbogus: 1\n")
    assert main(["config", "check", str(bad)]) == 2
    out = capsys.readouterr().out
    assert "scp.port: must be >= 1, got 0" in out
    assert "bogus: unknown key" in out


# --- hostile YAML (issue #16, defect 11) ---------------------------------------------------


def test_duplicate_top_level_key_is_refused(tmp_path: Path) -> None:
    # a second `scp:` used to replace the first silently: its calling-AE allow-list became "any"
    p = write(
        tmp_path,
        "scp:\n  port: 11112\n  allowed_calling_ae_titles: [MODALITY]\nscp:\n  port: 11113\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert info.value.problems == ["line 4, column 1: duplicate key 'scp' (first at line 1)"]


def test_duplicate_nested_key_is_refused(tmp_path: Path) -> None:
    p = write(tmp_path, "scp:\n  port: 11112\n  ae_title: A\n  port: 104\n")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert info.value.problems == ["line 4, column 3: duplicate key 'port' (first at line 2)"]


def test_merge_key_override_is_not_a_duplicate(tmp_path: Path) -> None:
    # `<<: *anchor` then an explicit key is YAML's way to override: still allowed
    p = write(tmp_path, "scp:\n  <<: {port: 11112, ae_title: BASE}\n  ae_title: OVERRIDE\n")
    cfg = load_config(p)
    assert cfg.scp.ae_title == "OVERRIDE"


def test_deep_nesting_is_a_clear_error(tmp_path: Path) -> None:
    p = write(tmp_path, "scp: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    (line,) = info.value.problems
    assert line.startswith("line 1, column ") and line.endswith("nested more than 64 levels deep")


def test_deep_block_nesting_is_a_clear_error(tmp_path: Path) -> None:
    text = "scp:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(400))
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert info.value.problems[0].endswith("nested more than 64 levels deep")


def test_oversize_file_is_refused_unparsed(tmp_path: Path) -> None:
    p = write(tmp_path, "# " + "x" * (1 << 20) + "\nscp: {port: 11112}\n")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert info.value.problems == ["file is larger than 1 MiB; refused"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("scp: {port: 1}\nscp: {port: 2}\n", "line 2, column 1: duplicate key 'scp'"),
        ("scp: " + "[" * 5000 + "]" * 5000 + "\n", "nested more than 64 levels deep"),
        ("# " + "x" * (2 << 20) + "\n", "file is larger than 1 MiB"),
    ],
)
def test_cli_config_check_hostile_yaml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    bad = write(tmp_path, text)
    assert main(["config", "check", str(bad)]) == 2
    captured = capsys.readouterr()
    assert f"{bad}: INVALID (1 problem(s))" in captured.out
    assert expected in captured.out
    assert "Traceback" not in captured.out + captured.err
