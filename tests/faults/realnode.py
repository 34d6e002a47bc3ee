"""The fault suite's real-node harness: a node as its own process (``python -m node node run``)
against a real vendor process (mutual TLS) and a real Orthanc that never overwrites
(``OverwriteInstances: false``).

The peers are made once per test module (the ``peers`` fixture in ``tests/faults/conftest.py``);
each case gets its own node (state dir, ports, config). The vendor takes one ciphertext per
request (``limits.max_request_bytes``), so an N-image study is N vendor requests, and the
hospital's CKKS keys are made once and their public context is already at the vendor, so no case
pays for key generation. Cases may kill, stop or restart the vendor and the PACS
(:meth:`Peers.restart_vendor`, :meth:`Peers.restart_pacs`); each leaves them running.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from pydicom.uid import Comprehensive3DSRStorage, EnhancedSRStorage

from node.config import NodeConfig, parse_model
from node.demo.localpacs import stop_process
from node.demo.phantom_study import PlantedIdentity, phantom_cr_study, write_study_files
from node.demo.stack import DEMO_MODEL_DIR
from node.sr import read_result_sr
from secure_infer import (
    ClientSettings,
    VendorClient,
    create_ca,
    issue_client_cert,
    issue_server_cert,
)
from tests.support.peers import Orthanc, free_port, peer_env, require_tool, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
VENDOR = "demo-vendor"
MODEL = "demo-lesion"
SR_CLASSES = (str(Comprehensive3DSRStorage), str(EnhancedSRStorage))


# ---------------------------------------------------------------------- shared peers


@dataclass
class Peers:
    root: Path
    certs: dict[str, Path]
    vendor_port: int
    vendor_chain: Path
    pacs: Orthanc
    ckks_keys: Path  # the hospital's CKKS keys, context already at the vendor
    vendor: subprocess.Popen[bytes]

    @property
    def vendor_log(self) -> Path:
        return self.root / "vendor" / "vendor.log"

    def signal_vendor(self, sig: signal.Signals) -> None:
        os.kill(self.vendor.pid, sig)

    def restart_vendor(self) -> None:
        """(Re)start the vendor on the same port and state dir (its stored contexts and chain
        survive); a stopped or killed vendor is ended first."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.vendor.pid, signal.SIGCONT)
        stop_process(self.vendor, timeout=15)
        self.vendor = _start_vendor(self.root / "vendor", self.certs, self.vendor_port)
        wait_for_port("127.0.0.1", self.vendor_port, timeout=30)

    def ensure_vendor(self) -> None:
        """Running and not stopped (a case that failed half-way may have left it otherwise)."""
        if self.vendor.poll() is not None:
            self.restart_vendor()
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.vendor.pid, signal.SIGCONT)

    def restart_pacs(self) -> None:
        """Start Orthanc again on the same ports and storage (after :meth:`stop_pacs`)."""
        self.pacs.__enter__()

    def stop_pacs(self) -> None:
        self.pacs.__exit__(None, None, None)


def _start_vendor(root: Path, certs: dict[str, Path], port: int) -> subprocess.Popen[bytes]:
    config = {
        "listen": {"host": "127.0.0.1", "port": port},
        "tls": {
            "cert": str(certs["server_cert"]),
            "key": str(certs["server_key"]),
            "client_ca": str(certs["ca"]),
        },
        "models": [str(DEMO_MODEL_DIR / "manifest.yaml")],
        "state_dir": str(root / "state"),
        # one ~400 kB ciphertext per request: a study of N images is N requests
        "limits": {"workers": 1, "queue_size": 8, "max_request_bytes": 600_000},
        "log_level": "INFO",
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "vendor.yaml").write_text(yaml.safe_dump(config))
    with open(root / "vendor.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "secure_infer.vendor", "serve",
             "--config", str(root / "vendor.yaml")],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip


@contextlib.contextmanager
def running_peers(root: Path) -> Iterator[Peers]:
    """A vendor process and an Orthanc (``OverwriteInstances: false``) for one test module."""
    require_tool("storescu")
    tls = root / "tls"
    create_ca(tls / "ca")
    server = issue_server_cert(tls / "ca", tls / "server")
    client = issue_client_cert(tls / "ca", tls / "hospital", "st-example-hospital")
    certs = {
        "ca": tls / "ca" / "ca.crt",
        "server_cert": server.cert,
        "server_key": server.key,
        "client_cert": client.cert,
        "client_key": client.key,
    }
    port = free_port()
    vendor = _start_vendor(root / "vendor", certs, port)
    peers: Peers | None = None
    try:
        with Orthanc(root / "pacs", overwrite_instances=False) as pacs:
            # the hospital's CKKS keys, made once and copied into each case's key dir: the
            # vendor already holds their public context, so no case pays for key generation
            keys = root / "ckks" / VENDOR
            settings = ClientSettings(
                url=f"https://127.0.0.1:{port}", client_cert=certs["client_cert"],
                client_key=certs["client_key"], ca=certs["ca"], max_attempts=60,
                initial_backoff=0.2, max_backoff=0.5,
            )  # fmt: skip
            with VendorClient(settings, keys) as probe:
                probe.ensure_context(MODEL)
            peers = Peers(root, certs, port, root / "vendor" / "state" / "chain.jsonl", pacs,
                          root / "ckks", vendor)  # fmt: skip
            yield peers
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill((peers.vendor if peers else vendor).pid, signal.SIGCONT)
        stop_process(peers.vendor if peers else vendor, timeout=15)


@contextlib.contextmanager
def tmpfs(mnt: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` (``mount -o size=``) at ``mnt``, always unmounted (needs root;
    under CI=true a failed mount fails the case instead of skipping it)."""
    mnt.mkdir(parents=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mnt)],
                       capture_output=True, text=True)  # fmt: skip
    if r.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot mount a tmpfs (root needed): {r.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=True)


# ---------------------------------------------------------------------- one node


def merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def node_config(
    tmp: Path, peers: Peers, quiet: float, overrides: Mapping[str, Any] | None = None
) -> tuple[NodeConfig, dict[str, Any]]:
    """A node's config (parsed, and as the YAML data) for one case: its state under ``tmp``."""
    data: dict[str, Any] = {
        "node": {"state_dir": str(tmp / "state"), "log_level": "INFO"},
        "scp": {"ae_title": "BLINDREAD", "port": free_port(), "min_free_bytes": 0},
        "completion": {"quiet_seconds": quiet, "poll_seconds": 0.05},
        "destinations": {
            "pacs": {"ae_title": peers.pacs.aet, "host": "127.0.0.1",
                     "port": peers.pacs.dicom_port},
        },
        "sender": {"max_attempts": 3, "initial_backoff_seconds": 0.2},
        "vendors": {
            VENDOR: {
                "url": f"https://127.0.0.1:{peers.vendor_port}",
                "client_cert": str(peers.certs["client_cert"]),
                "client_key": str(peers.certs["client_key"]),
                "ca": str(peers.certs["ca"]),
                "models": [MODEL],
                "max_attempts": 3,
                "initial_backoff_seconds": 0.2,
            }
        },
        "routes": [
            {
                "name": "chest",
                "match": {"attribute": "Modality", "in": ["CR", "DX"]},
                "action": {"infer": {"vendor": VENDOR, "model": MODEL, "destinations": ["pacs"]}},
            }
        ],
        "metrics": {"enabled": True, "host": "127.0.0.1", "port": free_port()},
    }
    data = merge(data, overrides or {})
    return parse_model(data, NodeConfig, "<fault-suite config>"), data


class NodeProc:
    """``python -m node node run`` in its own process, its stderr appended to ``log``."""

    def __init__(self, cfg: NodeConfig, cfg_path: Path, log: Path) -> None:
        self.cfg, self.cfg_path, self.log = cfg, cfg_path, log
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def prepare(cls, tmp: Path, cfg: NodeConfig, data: dict[str, Any], peers: Peers) -> NodeProc:
        """Write the config, copy the module's CKKS keys into the node's key dir."""
        shutil.copytree(peers.ckks_keys, cfg.node.keys / "ckks")
        cfg_path = tmp / "node.yaml"
        cfg_path.write_text(yaml.safe_dump(data))
        return cls(cfg, cfg_path, tmp / "node.log")

    def start(self, kill_at: str | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BLINDREAD_")}
        if kill_at is not None:
            env |= {"BLINDREAD_TEST_HOOKS": "1", "BLINDREAD_FAULT_KILL_AT": kill_at}
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "node", "node", "run", "--config", str(self.cfg_path)],
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
        end = time.monotonic() + 60  # a loaded 2-core CI machine
        while self.proc.poll() is None and time.monotonic() < end:
            try:
                wait_for_port("127.0.0.1", self.cfg.scp.port, timeout=0.2)
                return
            except TimeoutError:
                pass
        pytest.fail(f"the node did not start (exit {self.proc.poll()}); "
                    f"log:\n{self.log.read_text()[-3000:]}")  # fmt: skip

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def wait_killed(self, timeout: float = 40.0) -> None:
        """Wait for the test hook's SIGKILL."""
        assert self.proc is not None
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the node did not reach its kill point in {timeout:.0f} s; "
                        f"log:\n{self.log.read_text()[-3000:]}")  # fmt: skip
        assert self.proc.returncode == -signal.SIGKILL, self.proc.returncode

    def stop(self) -> None:
        """End the node. SIGKILL too: what is checked afterwards (the job store, the PACS, the
        log) is durable by then, and a clean SIGTERM stop costs ~4 s a case here
        (``tests/integration/test_node_crash.py`` checks the clean stop)."""
        if self.proc is not None and self.proc.poll() is None:
            self.kill()

    def _get(self, path: str) -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{self.cfg.metrics.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:  # loopback http
                return int(resp.status), bytes(resp.read())
        except urllib.error.HTTPError as err:
            return int(err.code), bytes(err.read())

    def scrape(self) -> dict[str, float]:
        status, body = self._get("/metrics")
        assert status == 200, status
        return {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in body.decode().splitlines()
            if line and not line.startswith("#")
        }

    def healthz(self) -> tuple[int, dict[str, bool]]:
        """``/healthz``'s status code and checks."""
        status, body = self._get("/healthz")
        return status, dict(json.loads(body)["checks"])

    def send(self, files: list[Path]) -> None:
        """dcmtk ``storescu``; it exits 0 only if every C-STORE was answered with success."""
        subprocess.run(
            [require_tool("storescu"), "-aet", "MODALITY", "-aec", "BLINDREAD", "127.0.0.1",
             str(self.cfg.scp.port), *map(str, files)],
            check=True, env=peer_env(), capture_output=True, timeout=60,
        )  # fmt: skip


def wait(cond: Callable[[], bool], timeout: float, what: str, log: Path | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.02)
    if not cond():
        tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
        pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{tail}")


@dataclass(frozen=True)
class JobRow:
    id: int
    state: str
    files: int
    attempts: int
    last_error: str | None


def job_rows(state_dir: Path) -> list[JobRow]:
    """Every job, read without the node's JobStore."""
    path = state_dir / "jobs.sqlite"
    if not path.exists():
        return []
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        rows = con.execute(
            "SELECT id, state, files, attempts, last_error FROM jobs ORDER BY id"
        ).fetchall()
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        con.close()
    return [JobRow(int(i), str(s), len(json.loads(f)), int(a), e) for i, s, f, a, e in rows]


def jobs(state_dir: Path) -> list[tuple[int, str, int]]:
    """(id, state, number of files) of every job."""
    return [(r.id, r.state, r.files) for r in job_rows(state_dir)]


def steps(state_dir: Path) -> set[str]:
    """Names of the step records of every job (``r0-deid``, ``r0-deliver-pacs``, ...)."""
    return {p.stem for p in (state_dir / "jobs").glob("*/steps/*.json")}


def chain_len(peers: Peers) -> int:
    path = peers.vendor_chain
    return len(path.read_bytes().splitlines()) if path.exists() else 0


def srs(pacs: Orthanc, study_uid: str) -> list[pydicom.Dataset]:
    out = []
    for inst in pacs.instances_of_study(study_uid):
        ds = pydicom.dcmread(io.BytesIO(pacs.file(inst["ID"])))
        if str(ds.SOPClassUID) in SR_CLASSES:
            out.append(ds)
    return out


def assert_one_current_sr(pacs: Orthanc, study_uid: str, sent: set[str]) -> None:
    """Exactly one SR for the study in the PACS, current, citing every instance sent."""
    found = srs(pacs, study_uid)
    assert len(found) == 1, f"{len(found)} SRs for the study in the PACS"
    superseded = {u for ds in found for u in read_result_sr(ds).predecessor_uids}
    current = [ds for ds in found if str(ds.SOPInstanceUID) not in superseded]
    assert len(current) == 1
    [finding] = read_result_sr(current[0]).findings
    assert set(finding.source_sop_instance_uids) == sent


@dataclass(frozen=True)
class Study:
    files: list[Path]
    uid: str
    sent: set[str]  # SOP Instance UIDs
    needles: list[bytes]  # what must never appear in a log


def make_study(tmp: Path, images: int, seed: int) -> Study:
    who = PlantedIdentity()
    study = phantom_cr_study([i == 1 for i in range(images)], seed=seed, size=64, identity=who)
    uid = str(study[0].StudyInstanceUID)
    sent = {str(ds.SOPInstanceUID) for ds in study}
    needles = [*who.needles(), uid.encode(), str(study[0].SeriesInstanceUID).encode(),
               *(u.encode() for u in sent)]  # fmt: skip
    return Study(write_study_files(study, tmp / "modality"), uid, sent, needles)


def assert_log_clean(log: Path, needles: list[bytes]) -> None:
    text = log.read_bytes()
    assert text, "the node wrote no log"
    leaked = [n.decode() for n in needles if n in text]
    assert not leaked, f"PHI in the node log: {leaked}"
