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
    assert main(["config", "check", str(ROOT / "config" / "node.example.yaml")]) == 0
    bad = write(tmp_path, "scp:\n  port: 0\nbogus: 1\n")
    assert main(["config", "check", str(bad)]) == 2
    out = capsys.readouterr().out
    assert "scp.port: must be >= 1, got 0" in out
    assert "bogus: unknown key" in out
