"""Admin commands never create the node's state (issue #14): a wrong --config used to make
/var/lib/blindread with fresh keys and a 0644 jobs.sqlite; job step records were 0644."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from node.cli import main
from node.jobs import JobStore
from node.pipeline.deliver import Delivered
from node.pipeline.store import StepStore


def _config(tmp_path: Path) -> tuple[Path, Path]:
    state = tmp_path / "state"
    cfg = tmp_path / "node.yaml"
    cfg.write_text(f"node: {{state_dir: {state}}}\n")
    return cfg, state


@pytest.mark.parametrize(
    "argv",
    [
        ["jobs", "list"],
        ["jobs", "retry", "1"],
        ["jobs", "purge", "--older-than", "1"],
        ["vault", "purge", "--older-than", "1"],
    ],
)
def test_read_only_commands_create_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    cfg, state = _config(tmp_path)
    assert main([*argv, "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"{state} does not exist" in err
    assert "the node has not run with this config yet" in err
    assert not state.exists()


def test_jobs_list_on_existing_state(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg, state = _config(tmp_path)
    JobStore(state / "jobs.sqlite").close()
    assert main(["jobs", "list", "--config", str(cfg)]) == 0
    assert "STATE" in capsys.readouterr().out


def test_job_store_and_step_records_are_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        JobStore(tmp_path / "jobs.sqlite").close()
        steps = StepStore(tmp_path / "steps")
        steps.put(Delivered(sent=1))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "jobs.sqlite").stat().st_mode) == 0o600
    (record,) = (tmp_path / "steps").iterdir()
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
