"""The fault suite's PHI scan: every log a fault case wrote is scanned for planted identifiers
once the session ends (issue #16: "a PHI scan of every log the suite produced runs at the end").

Two kinds of log are collected:

* files: a case that runs a node (or vendor) as its own process registers its log file with
  :func:`fault_logs` (``fault_logs.add(path, needles)``), naming the identifiers it planted;
* records: every log record emitted in-process during a test in this folder by the product's
  loggers (``node``, ``scp``, ``secure_infer``) is written to a per-test file, scanned too.

Each file is scanned for its own needles plus :data:`ALWAYS`: the made-up identity of
:class:`node.demo.phantom_study.PlantedIdentity`, the synthetic studies' patient name, and the
root of every UID pydicom's ``generate_uid`` makes in tests (the node's own UIDs are ``2.25.``
UIDs, so a raw source UID in a log is always a finding). A finding fails the session (an error
at the teardown of the last test that used the scan) naming the file and the needle.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from node.demo.phantom_study import PlantedIdentity
from tests.faults import realnode

#: needles every fault log is scanned for
ALWAYS: tuple[bytes, ...] = (
    *PlantedIdentity().needles(),
    b"SYNTHETIC^PATIENT",
    b"1.2.826.0.1.3680043.8.498.",  # pydicom.uid.generate_uid()'s default root
)

PRODUCT_LOGGERS = ("node", "scp", "secure_infer")


@dataclass
class FaultLogs:
    """Log files of the fault suite and the identifiers each must not contain."""

    files: dict[Path, set[bytes]] = field(default_factory=dict)

    def add(self, path: Path, needles: Iterable[bytes] = ()) -> None:
        self.files.setdefault(path, set()).update(needles)

    def scan(self) -> list[str]:
        """``"<file>: <needle>"`` for every planted identifier found in a registered log."""
        found = []
        for path, needles in sorted(self.files.items()):
            if not path.exists():
                continue
            data = path.read_bytes()
            for needle in sorted({*needles, *ALWAYS}):
                if needle and needle in data:
                    found.append(f"{path}: {needle.decode(errors='replace')!r}")
        return found


class _ToFile(logging.Handler):
    def __init__(self, path: Path) -> None:
        super().__init__(logging.DEBUG)
        self.path = path
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.split(".")[0] not in PRODUCT_LOGGERS:
            return
        try:
            line = self.format(record)
        except Exception:  # a bad record must not break the case
            line = f"{record.levelname} {record.name} <unformattable>"
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")


_SESSION_LOGS = FaultLogs()


@pytest.fixture(scope="session")
def fault_logs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultLogs]:
    """The session's registry of fault logs; scanned for PHI when the session ends."""
    yield _SESSION_LOGS
    found = _SESSION_LOGS.scan()
    n = len(_SESSION_LOGS.files)
    assert not found, f"PHI in {len(found)} place(s) of the fault suite's {n} logs:\n" + "\n".join(
        found
    )


@pytest.fixture(autouse=True)
def _record_product_logs(
    request: pytest.FixtureRequest, fault_logs: FaultLogs, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Every product log record of this fault case, into a file the session scan reads."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid)[-120:]
    path = tmp_path_factory.getbasetemp() / "fault-logs" / f"{name}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = _ToFile(path)
    root = logging.getLogger()
    root.addHandler(handler)
    fault_logs.add(path)
    try:
        yield
    finally:
        root.removeHandler(handler)


@pytest.fixture(scope="module")
def peers(
    tmp_path_factory: pytest.TempPathFactory, fault_logs: FaultLogs
) -> Iterator[realnode.Peers]:
    """A real vendor process and a real Orthanc (``OverwriteInstances: false``), one pair per
    test module that asks for them (``tests/faults/realnode.py``); the vendor's log is scanned."""
    root = tmp_path_factory.mktemp("peers")
    fault_logs.add(root / "vendor" / "vendor.log", PlantedIdentity().needles())
    with realnode.running_peers(root) as peers:
        yield peers


@pytest.fixture
def peers_up(peers: realnode.Peers) -> Iterator[realnode.Peers]:
    """:func:`peers`, made whole again after the case (vendor running, PACS up)."""
    try:
        yield peers
    finally:
        peers.ensure_vendor()
        if peers.pacs.proc is None or peers.pacs.proc.poll() is not None:
            peers.restart_pacs()
