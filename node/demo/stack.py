"""A whole BlindRead deployment on one machine: vendor peer, PACS, hospital node.

Used by ``make demo``, the end-to-end integration test and ``benchmarks/e2e.py``, so all three
run exactly the same path:

* the vendor peer is a separate process (``blindread vendor serve``) behind mutual TLS with
  certificates generated here (private CA, server cert, one hospital client cert);
* the PACS is a real Orthanc when installed, otherwise an embedded pynetdicom Storage SCP;
* the node runs in this process with routing rules that send CR/DX chest images to the
  vendor's demo model and the SR back to the PACS.

Everything listens on free loopback ports inside ``workdir`` and is stopped on exit.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import pydicom
import yaml
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.events import Event

from node.app import Node, build_node
from node.config import NodeConfig, parse_model
from node.demo.localpacs import Orthanc, find_orthanc, free_port, nodelay_env, stop_process
from node.demo.phantom_study import write_study_files
from scp import DestinationSettings, StorageSender
from secure_infer import (
    ClientSettings,
    VendorClient,
    create_ca,
    issue_client_cert,
    issue_server_cert,
)

__all__ = ["DEMO_MODEL_DIR", "EmbeddedPacs", "Stack"]

log = logging.getLogger(__name__)

DEMO_MODEL_DIR = Path(__file__).resolve().parents[2] / "secure_infer" / "models" / "demo-lesion"
SR_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.88.33")


class EmbeddedPacs:
    """Fallback PACS when Orthanc is not installed: a pynetdicom Storage SCP into a folder."""

    def __init__(self, folder: Path, aet: str = "DEMOPACS") -> None:
        self.folder = folder
        self.aet = aet
        self.host = "127.0.0.1"
        self.dicom_port = free_port()
        self._server: Any = None

    def _on_store(self, event: Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        self.folder.mkdir(parents=True, exist_ok=True)
        ds.save_as(self.folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        return 0x0000

    def __enter__(self) -> EmbeddedPacs:
        ae = AE(ae_title=self.aet)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context("1.2.840.10008.1.1")  # Verification
        self._server = ae.start_server(
            (self.host, self.dicom_port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
        )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.shutdown()

    def find_sr(self, study_uid: str) -> Dataset | None:
        for path in sorted(self.folder.glob("*.dcm")) if self.folder.exists() else []:
            ds = pydicom.dcmread(path)
            if ds.StudyInstanceUID == study_uid and ds.SOPClassUID in SR_SOP_CLASSES:
                return ds
        return None


class Stack:
    """Vendor peer + PACS + node; a context manager.

    Parameters
    ----------
    workdir
        Everything (keys, certificates, spool, PACS database, logs) lives below it.
    quiet_seconds
        The node's study completion timer.
    pacs
        ``"orthanc"``, ``"embedded"`` or ``"auto"`` (Orthanc when installed).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        quiet_seconds: float = 2.0,
        pacs: str = "auto",
        metrics: bool = False,
        console_users: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """``console_users`` (name -> password hash, all operators) turns on the console and
        REST API over HTTPS (a server certificate of the demo CA); ``extra`` overrides
        top-level config sections."""
        self.console_users = console_users
        self.extra = extra or {}
        self.certs: dict[str, Path] = {}
        self.workdir = workdir
        self.quiet_seconds = quiet_seconds
        self.use_orthanc = pacs == "orthanc" or (pacs == "auto" and find_orthanc() is not None)
        self.metrics = metrics
        self.vendor_port = free_port()
        self.node_port = free_port()
        self.vendor_proc: subprocess.Popen[bytes] | None = None
        self.pacs: Orthanc | EmbeddedPacs | None = None
        self.node: Node | None = None
        self.cfg: NodeConfig | None = None

    # ------------------------------------------------------------------ set-up

    def make_certs(self) -> dict[str, Path]:
        """A private CA, the vendor's server certificate and one hospital client certificate."""
        tls = self.workdir / "vendor-tls"
        create_ca(tls / "ca")
        server = issue_server_cert(tls / "ca", tls / "server")
        client = issue_client_cert(tls / "ca", tls / "hospital", "st-example-hospital")
        http = issue_server_cert(tls / "ca", tls / "node-http")
        return {
            "ca": tls / "ca" / "ca.crt",
            "server_cert": server.cert,
            "server_key": server.key,
            "client_cert": client.cert,
            "client_key": client.key,
            "http_cert": http.cert,
            "http_key": http.key,
        }

    def start_vendor(self, certs: dict[str, Path]) -> None:
        """Start ``blindread vendor serve`` (demo model) and wait until it answers over mTLS."""
        vendor_dir = self.workdir / "vendor"
        vendor_dir.mkdir(parents=True, exist_ok=True)
        config = {
            "listen": {"host": "127.0.0.1", "port": self.vendor_port},
            "tls": {
                "cert": str(certs["server_cert"]),
                "key": str(certs["server_key"]),
                "client_ca": str(certs["ca"]),
            },
            "models": [str(DEMO_MODEL_DIR / "manifest.yaml")],
            "state_dir": str(vendor_dir / "state"),
            "limits": {"workers": 1, "queue_size": 8},
            "log_level": "INFO",
        }
        cfg_path = vendor_dir / "vendor.yaml"
        cfg_path.write_text(yaml.safe_dump(config))
        self.vendor_log = open(vendor_dir / "vendor.log", "wb")
        self.vendor_proc = subprocess.Popen(
            [sys.executable, "-m", "secure_infer.vendor", "serve", "--config", str(cfg_path)],
            stdout=self.vendor_log,
            stderr=subprocess.STDOUT,
            env=os.environ.copy(),
        )
        settings = ClientSettings(
            url=f"https://127.0.0.1:{self.vendor_port}",
            client_cert=certs["client_cert"],
            client_key=certs["client_key"],
            ca=certs["ca"],
            max_attempts=1,
        )
        deadline = time.monotonic() + 60
        with VendorClient(settings, self.workdir / "probe-keys") as probe:
            while True:
                if self.vendor_proc.poll() is not None:
                    raise RuntimeError("vendor peer exited; see " + str(vendor_dir / "vendor.log"))
                try:
                    probe.health()
                    return
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)

    def node_config(self, certs: dict[str, Path]) -> NodeConfig:
        assert self.pacs is not None
        pacs_aet = self.pacs.aet
        data = {
            "node": {"name": "blindread-demo", "state_dir": str(self.workdir / "node")},
            "scp": {
                "ae_title": "BLINDREAD",
                "port": self.node_port,
                "min_free_bytes": 10_000_000,
            },
            "completion": {
                "quiet_seconds": self.quiet_seconds,
                "max_age_seconds": 600,
                "poll_seconds": 0.2,
            },
            "destinations": {
                "pacs": {"ae_title": pacs_aet, "host": "127.0.0.1", "port": self.pacs.dicom_port}
            },
            "sender": {"max_attempts": 5, "initial_backoff_seconds": 0.5},
            "vendors": {
                "demo-vendor": {
                    "url": f"https://127.0.0.1:{self.vendor_port}",
                    "client_cert": str(certs["client_cert"]),
                    "client_key": str(certs["client_key"]),
                    "ca": str(certs["ca"]),
                    "models": ["demo-lesion"],
                }
            },
            "sr": {"series_number": 9901},
            "routes": [
                {
                    "name": "chest-xray-ai",
                    "match": {
                        "all": [
                            {"attribute": "Modality", "in": ["CR", "DX"]},
                            {"attribute": "BodyPartExamined", "equals": "CHEST"},
                        ]
                    },
                    "action": {
                        "infer": {
                            "vendor": "demo-vendor",
                            "model": "demo-lesion",
                            "destinations": ["pacs"],
                        }
                    },
                }
            ],
            "metrics": {"enabled": self.metrics, "port": free_port()},
        }
        if self.console_users:
            data["metrics"] = {"enabled": True, "port": free_port(),
                               "tls_cert": str(certs["http_cert"]),
                               "tls_key": str(certs["http_key"])}  # fmt: skip
            data["console"] = {"enabled": True, "users": [
                {"name": n, "password_hash": h, "role": "operator"}
                for n, h in self.console_users.items()
            ]}  # fmt: skip
        data.update(self.extra)
        return parse_model(data, NodeConfig, "<demo config>")

    def __enter__(self) -> Stack:
        try:
            certs = self.certs = self.make_certs()
            self.start_vendor(certs)
            if self.use_orthanc:
                self.pacs = Orthanc(
                    self.workdir / "pacs",
                    modalities={"blindread": ("BLINDREAD", "127.0.0.1", self.node_port)},
                ).__enter__()
            else:
                self.pacs = EmbeddedPacs(self.workdir / "pacs").__enter__()
            self.cfg = self.node_config(certs)
            self.node = build_node(self.cfg)
            self.node.start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.node is not None:
            self.node.stop()
            self.node = None
        if self.pacs is not None:
            self.pacs.__exit__(None, None, None)
            self.pacs = None
        self.stop_vendor()

    def stop_vendor(self) -> None:
        """Stop the vendor peer (an outage); :meth:`start_vendor` with :attr:`certs` brings it
        back on the same port with the same state."""
        if self.vendor_proc is not None:
            stop_process(self.vendor_proc, timeout=15)
            self.vendor_log.close()
            self.vendor_proc = None

    # ------------------------------------------------------------------ use

    def send_study(self, datasets: Sequence[Dataset]) -> str:
        """Send a study to the node as a modality would (dcmtk storescu when installed)."""
        folder = self.workdir / "modality" / str(time.monotonic_ns())
        paths = write_study_files(datasets, folder)
        storescu = shutil.which("storescu")
        if storescu is not None:
            subprocess.run(
                [storescu, "-aet", "MODALITY", "-aec", "BLINDREAD", "127.0.0.1",
                 str(self.node_port), *map(str, paths)],
                check=True, env=nodelay_env(), capture_output=True, timeout=120,
            )  # fmt: skip
        else:
            dest = DestinationSettings(
                ae_title="BLINDREAD", host="127.0.0.1", port=self.node_port,
                calling_ae_title="MODALITY",
            )  # fmt: skip
            StorageSender().send(dest, paths)
        return str(datasets[0].StudyInstanceUID)

    def find_sr(self, study_uid: str) -> Dataset | None:
        """The result SR of ``study_uid`` in the PACS, if it is there yet."""
        if isinstance(self.pacs, EmbeddedPacs):
            return self.pacs.find_sr(study_uid)
        assert isinstance(self.pacs, Orthanc)
        series = self.pacs.post(
            "/tools/find",
            {"Level": "Series", "Query": {"StudyInstanceUID": study_uid, "Modality": "SR"}},
        )
        for series_id in series:
            for inst in self.pacs.get(f"/series/{series_id}/instances"):
                return pydicom.dcmread(io.BytesIO(self.pacs.file(inst["ID"])))
        return None

    def wait_for_sr(self, study_uid: str, timeout: float = 120.0) -> Dataset:
        """Poll the PACS until the SR of ``study_uid`` is there."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.find_sr(study_uid)
            if found is not None:
                return found
            time.sleep(0.25)
        raise TimeoutError(f"no SR in the PACS after {timeout:.0f} s")
