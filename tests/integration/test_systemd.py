"""The hardened unit passes ``systemd-analyze verify`` and keeps its hardening."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.peers import require_tool

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "blindread-node.service"


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            k, v = line.split("=", 1)
            out.setdefault(k, []).append(v)
    return out


def test_unit_hardening() -> None:
    d = directives(UNIT.read_text())
    assert d["User"] == ["blindread"]
    assert d["ProtectSystem"] == ["strict"]
    assert d["ReadWritePaths"] == ["/var/lib/blindread"]
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome", "PrivateDevices"):
        assert d[key] == ["yes"], key
    assert d["Restart"] == ["on-failure"]
    assert d["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    assert d["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert "@system-service" in d["SystemCallFilter"]
    assert "node run --config" in d["ExecStart"][0]


@pytest.mark.peer
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = require_tool("systemd-analyze")
    # verify checks that ExecStart exists: point it at this interpreter for the check only
    text = UNIT.read_text().replace(
        "/opt/blindread/.venv/bin/blindread", f"{sys.executable} -m node"
    )
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    r = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    problems = [ln for ln in (r.stdout + r.stderr).splitlines() if UNIT.name in ln]
    assert problems == [], problems
