"""Admin commands end in one readable line, not a traceback (issue #14): ``node run`` on a busy
port, ``sr show --json | head``, ``audit verify`` before any ledger, ``echo`` to a closed port;
``sr build`` never claims hand-fed outputs were computed under encryption."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from node.cli import main
from node.sr import read_result_sr
from node.sr.concepts import ENCRYPTION_STATEMENT, NOT_ENCRYPTED_STATEMENT
from tests.node.test_sr_cli import _build_args, inputs  # noqa: F401  (fixture)
from tests.support.peers import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_node_run_on_a_busy_port(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = tmp_path / "node.yaml"
        cfg.write_text(
            f"node: {{state_dir: {tmp_path / 'state'}}}\n"
            f"scp: {{host: 127.0.0.1, port: {port}, min_free_bytes: 0}}\n"
        )
        assert main(["node", "run", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"node run: cannot listen on 127.0.0.1:{port} (scp.host/scp.port): address already in "
        "use (another program, or another node, listens there)"
    )
    assert not any("Traceback" in line for line in err)


def test_sr_show_json_into_a_closed_pipe(
    inputs: dict[str, object],  # noqa: F811
    tmp_path: Path,
) -> None:
    out = tmp_path / "sr.dcm"
    assert main(_build_args(inputs, out)) == 0
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader (head) is gone before anything is written
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "node", "sr", "show", "--json", str(out)],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120,
            env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert proc.stderr == ""  # no BrokenPipeError traceback, no "Exception ignored"
    assert proc.returncode == 141


def test_sr_build_of_hand_fed_outputs_says_not_encrypted(
    inputs: dict[str, object],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "sr.dcm"
    sc = tmp_path / "sc.dcm"
    assert main(_build_args(inputs, out, "--sc", str(sc))) == 0
    assert "computed under encryption: no" in capsys.readouterr().out
    ds = pydicom.dcmread(out)
    report = read_result_sr(ds)
    assert report.findings and not any(f.computed_under_encryption for f in report.findings)
    for f in report.findings:
        assert NOT_ENCRYPTED_STATEMENT in f.comments and ENCRYPTION_STATEMENT not in f.comments
    assert "not computed under encryption" in str(pydicom.dcmread(sc).ContributingEquipmentSequence)
    assert main(["sr", "show", str(out)]) == 0
    assert "Computed under encryption: NO" in capsys.readouterr().out


def test_audit_verify_before_any_ledger(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "node.yaml"
    cfg.write_text(f"node: {{state_dir: {tmp_path / 'state'}}}\n")
    ledger = tmp_path / "state" / "audit" / "ledger.jsonl"
    for argv in (["audit", "verify"], ["audit", "export", "--since", "2026-01-01"]):
        assert main([*argv, "--config", str(cfg)]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"no audit ledger at {ledger} yet")
        assert "FileNotFoundError" not in err
    ledger.parent.mkdir(parents=True)
    ledger.write_text("")
    assert main(["audit", "verify", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "no such public key file" in err and "FileNotFoundError" not in err


def test_echo_to_a_closed_port(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "node.yaml"
    cfg.write_text(
        f"node: {{state_dir: {tmp_path / 'state'}}}\n"
        f"destinations:\n  pacs: {{ae_title: PACS, host: 127.0.0.1, port: {free_port()}}}\n"
    )
    assert main(["echo", "--config", str(cfg), "pacs"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("echo pacs: FAILED (") and "connection refused" in out
