"""Outputs are well-formed for independent DICOM toolkits: dcmtk parses every file and dciodvfy
finds no conformance error that the input did not already have (the raw-bytes fast path and the
empty/dummy/removed choices must not break IODs)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from node.deid import Deidentifier, DeidKeys
from node.deid.batch import deidentify_tree
from tests.support.peers import require_tool
from tests.support.phi_corpus import generate

pytestmark = pytest.mark.peer

_ERR = re.compile(r"^Error - (.*)$")


def _errors(tool: str, path: Path) -> set[str]:
    proc = subprocess.run([tool, "-new", str(path)], capture_output=True, text=True, timeout=60)
    found = set()
    for line in (proc.stdout + proc.stderr).splitlines():
        m = _ERR.match(line.strip())
        if m:
            found.add(m.group(1))
    return found


@pytest.mark.parametrize(
    "options",
    [(), ("retain_long_modified_dates", "clean_descriptors", "clean_structured_content")],
    ids=["basic", "fuller"],
)
def test_outputs_parse_and_add_no_iod_errors(tmp_path: Path, options: tuple[str, ...]) -> None:
    dcmdump = require_tool("dcmdump")
    dciodvfy = require_tool("dciodvfy")
    generate(tmp_path / "in", seed=3, n_patients=1)
    summary = deidentify_tree(
        tmp_path / "in", tmp_path / "out", Deidentifier(options, DeidKeys.ephemeral()), fsync=False
    )
    assert summary.written == 4
    for out in sorted((tmp_path / "out").rglob("*.dcm")):
        src = tmp_path / "in" / out.relative_to(tmp_path / "out")
        dump = subprocess.run([dcmdump, "-q", str(out)], capture_output=True, text=True, timeout=60)
        assert dump.returncode == 0 and not dump.stderr.strip(), dump.stderr
        new = _errors(dciodvfy, out) - _errors(dciodvfy, src)
        assert new == set(), f"{out.name}: {sorted(new)}"
