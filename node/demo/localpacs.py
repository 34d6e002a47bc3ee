"""A local PACS for the demo and the integration tests: a real Orthanc in a folder of its own.

Orthanc is started with a generated config on free loopback ports (REST and DICOM), with no
plugins and no remote access, and is always stopped again. ``find_orthanc()`` says whether the
Debian package is installed; the demo falls back to an embedded pynetdicom receiver without it.
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
from typing import IO, Any

__all__ = ["Orthanc", "find_orthanc", "free_port", "nodelay_env", "stop_process"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def nodelay_env() -> dict[str, str]:
    """Environment for dcmtk/Orthanc with Nagle off (DESIGN.md section 4)."""
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    return env


def find_orthanc() -> str | None:
    """Path of the Orthanc binary (Debian installs it in /usr/sbin), or None."""
    found = shutil.which("Orthanc")
    if found is None and Path("/usr/sbin/Orthanc").exists():
        found = "/usr/sbin/Orthanc"
    return found


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """Terminate a peer process and wait for it; kill it if it does not stop in ``timeout``."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Orthanc:
    """A real Orthanc started in ``workdir``; a context manager.

    ``modalities`` maps a name to ``(ae_title, host, port)`` so Orthanc can push to a node.
    ``overwrite_instances`` is Orthanc's ``OverwriteInstances``: ``False`` (Orthanc's own
    default, what most PACS do) keeps the first copy of a SOP Instance UID and ignores resends.
    """

    def __init__(
        self,
        workdir: Path,
        aet: str = "ORTHANC",
        modalities: dict[str, tuple[str, str, int]] | None = None,
        binary: str | None = None,
        overwrite_instances: bool = True,
    ) -> None:
        found = binary or find_orthanc()
        if found is None:
            raise FileNotFoundError("Orthanc is not installed (apt-get install orthanc)")
        self.binary = found
        self.workdir = workdir
        self.aet = aet
        self.host = "127.0.0.1"
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.modalities = modalities or {}
        self.overwrite_instances = overwrite_instances
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def __enter__(self) -> Orthanc:
        db = self.workdir / "orthanc-db"
        db.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "BlindReadLocalPACS",
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
            # True: a re-sent SOP Instance UID replaces the stored one. The node never relies
            # on it (an amended result is a new SR, docs/sr.md); tests that want a PACS with
            # Orthanc's default pass overwrite_instances=False
            "OverwriteInstances": self.overwrite_instances,
            "HttpsVerifyPeers": False,
        }
        cfg = self.workdir / "orthanc.json"
        cfg.write_text(json.dumps(config, indent=2))
        self._log = open(self.workdir / "orthanc.log", "wb")
        self.proc = subprocess.Popen(
            [self.binary, str(cfg)], stdout=self._log, stderr=subprocess.STDOUT, env=nodelay_env()
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = (self.workdir / "orthanc.log").read_text(errors="replace")[-2000:]
                self.__exit__(None, None, None)
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}: {tail}")
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
        stop_process(self.proc)
        if self._log is not None:
            self._log.close()
            self._log = None

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One REST call (JSON in, JSON out) on loopback."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)  # noqa: S310
        with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 - loopback http
            raw = resp.read()
        return json.loads(raw) if raw else None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)

    def upload(self, dicom_file: bytes) -> str:
        """Store one DICOM file through the REST API; returns Orthanc's instance ID."""
        req = urllib.request.Request(  # noqa: S310 - loopback http
            f"{self.url}/instances", data=dicom_file, method="POST",
            headers={"Content-Type": "application/dicom"},
        )  # fmt: skip
        with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 - loopback http
            answer: dict[str, Any] = json.loads(resp.read())
        return str(answer["ID"])

    def file(self, instance_id: str) -> bytes:
        """The DICOM file of an instance, as stored."""
        req = urllib.request.Request(f"{self.url}/instances/{instance_id}/file")  # noqa: S310
        with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 - loopback http
            data: bytes = resp.read()
        return data

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
