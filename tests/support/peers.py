"""Real DICOM peers for tests: dcmtk tools, Orthanc, dicom3tools.

Every peer runs on free loopback ports in a temp dir and is always torn down. Under ``CI=true`` a
missing tool fails the test instead of skipping it, so a green CI means the peers really ran.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import pytest

from node.demo.localpacs import Orthanc as _Orthanc
from node.demo.localpacs import free_port, nodelay_env, stop_process

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_tool(name: str) -> str:
    """Path of an external tool; skip the test if missing (fail under CI=true)."""
    path = shutil.which(name) or (
        f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None
    )
    if path is None:
        msg = f"external tool '{name}' is not installed (apt-get install dcmtk orthanc dicom3tools)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def wait_for_port(host: str, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout} s")


def peer_env() -> dict[str, str]:
    """Environment for dcmtk/Orthanc: Nagle off (see DESIGN.md section 4)."""
    return nodelay_env()


class Orthanc(_Orthanc):
    """:class:`node.demo.localpacs.Orthanc`, skipped (failed under CI=true) when not installed.

    ``overwrite_instances=False`` gives Orthanc's own default (a resent SOP Instance UID is
    ignored, the first copy kept), as a hospital PACS would behave.
    """

    def __init__(
        self,
        workdir: Path,
        aet: str = "ORTHANC",
        modalities: dict[str, tuple[str, str, int]] | None = None,
        overwrite_instances: bool = True,
    ) -> None:
        super().__init__(
            workdir,
            aet,
            modalities,
            binary=require_tool("Orthanc"),
            overwrite_instances=overwrite_instances,
        )


class StoreSCP:
    """dcmtk ``storescp`` writing every received instance into ``outdir``."""

    def __init__(
        self, outdir: Path, aet: str = "STORESCP", extra_args: tuple[str, ...] = ()
    ) -> None:
        self.binary = require_tool("storescp")
        self.outdir = outdir
        self.aet = aet
        self.host = "127.0.0.1"
        self.port = free_port()
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> StoreSCP:
        self.outdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--aetitle",
                self.aet,
                "--output-directory",
                str(self.outdir),
                "--accept-all",
                *self.extra_args,
                str(self.port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=peer_env(),
        )
        wait_for_port(self.host, self.port)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stop_process(self.proc)

    def received(self) -> list[Path]:
        return sorted(p for p in self.outdir.iterdir() if p.is_file())
