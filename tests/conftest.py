"""Shared fixtures. External peers live in ``tests/peers.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.peers import Orthanc


@pytest.fixture
def orthanc(tmp_path: Path) -> Orthanc:
    """A running Orthanc PACS in a temp dir (torn down after the test)."""
    with Orthanc(tmp_path / "orthanc") as pacs:
        yield pacs  # type: ignore[misc]
