"""``blindread deid`` (issue #14): a truncated input is reported and not written, OUT inside IN
is never re-processed, progress is shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.cli import main
from node.deid import Deidentifier, DeidKeys, parse_options
from node.deid.batch import deidentify_tree
from tests.node.test_sr_synth import make_study, write_study


def _tree(tmp_path: Path, n: int = 3) -> Path:
    src = tmp_path / "in"
    write_study(make_study(n), src)
    return src


def test_truncated_input_is_reported_not_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _tree(tmp_path)
    victim = sorted(p for p in src.rglob("*") if p.is_file())[0]
    data = victim.read_bytes()
    victim.write_bytes(data[:-100])  # cut inside the pixel data
    out = tmp_path / "out"
    code = main(["deid", str(src), str(out), "--map-out", str(tmp_path / "map")])
    captured = capsys.readouterr()
    assert code == 1
    assert "written=2" in captured.out and "truncated=1" in captured.out
    assert "1 truncated input file(s) not written" in captured.err
    assert not (out / victim.relative_to(src)).exists()
    skipped = (tmp_path / "map" / "skipped.csv").read_text()
    assert "truncated, not written: file ends inside its last element (" in skipped


def test_out_inside_in_is_not_reprocessed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _tree(tmp_path)
    out = src / "deid-out"
    assert main(["deid", str(src), str(out), "--map-out", str(src / "map")]) == 0
    first = capsys.readouterr().out
    assert "files=3 written=3" in first
    assert main(["deid", str(src), str(out), "--map-out", str(src / "map")]) == 0
    assert "files=3 written=3" in capsys.readouterr().out  # not 6: its own output is skipped
    assert not any("deid-out" in str(p.relative_to(out)) for p in out.rglob("*"))


def test_progress_bar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _tree(tmp_path)
    deid = Deidentifier(parse_options([]), DeidKeys.ephemeral())
    summary = deidentify_tree(src, tmp_path / "out", deid, fsync=False, progress=True)
    assert summary.written == 3
    err = capsys.readouterr().err
    assert "deid" in err and "3/3" in err
