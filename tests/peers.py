"""Real DICOM peers for tests: dcmtk tools, Orthanc, dicom3tools.

Every peer runs on free loopback ports in a temp dir and is always torn down. Under ``CI=true`` a
missing tool fails the test instead of skipping it, so a green CI means the peers really ran.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

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


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


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
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    return env


class Orthanc:
    """A real Orthanc started in ``workdir`` with its own config on free loopback ports.

    ``modalities`` maps a name to ``(ae_title, host, port)`` so Orthanc can push to our node.
    """

    def __init__(
        self,
        workdir: Path,
        aet: str = "ORTHANC",
        modalities: dict[str, tuple[str, str, int]] | None = None,
    ) -> None:
        self.binary = require_tool("Orthanc")
        self.workdir = workdir
        self.aet = aet
        self.host = "127.0.0.1"
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.modalities = modalities or {}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def __enter__(self) -> Orthanc:
        db = self.workdir / "orthanc-db"
        db.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "BlindReadTestPACS",
            "StorageDirectory": str(db),
            "IndexDirectory": str(db),
            "HttpPort": self.http_port,
            "HttpBindAddress": self.host,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "UnknownSopClassAccepted": True,
            "StorageCompression": False,
            "Plugins": [],
            "DicomModalities": {k: list(v) for k, v in self.modalities.items()},
            "StableAge": 2,
            "HttpsVerifyPeers": False,
        }
        cfg = self.workdir / "orthanc.json"
        cfg.write_text(json.dumps(config, indent=2))
        self._log = open(self.workdir / "orthanc.log", "wb")
        self.proc = subprocess.Popen(
            [self.binary, str(cfg)], stdout=self._log, stderr=subprocess.STDOUT, env=peer_env()
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"Orthanc exited with {self.proc.returncode}: "
                    + (self.workdir / "orthanc.log").read_text(errors="replace")[-2000:]
                )
            try:
                self.get("/system")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.1)
        self.__exit__(None, None, None)
        raise TimeoutError("Orthanc did not answer its REST API within 30 s")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=60) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)

    def instances_of_study(self, study_uid: str) -> list[dict[str, Any]]:
        """Instances (with their main DICOM tags) of the study with this Study Instance UID."""
        found = self.post(
            "/tools/find",
            {"Level": "Study", "Query": {"StudyInstanceUID": study_uid}, "Expand": False},
        )
        out: list[dict[str, Any]] = []
        for study_id in found:
            out.extend(self.get(f"/studies/{study_id}/instances"))
        return out


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
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def received(self) -> list[Path]:
        return sorted(p for p in self.outdir.iterdir() if p.is_file())
