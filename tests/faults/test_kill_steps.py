"""SIGKILL of the node at every pipeline step boundary (issue #16's fault suite).

Each case runs the node as its own process (``python -m node node run``) against a real vendor
peer (``python -m secure_infer.vendor serve``, mutual TLS) and a real Orthanc that never
overwrites (``OverwriteInstances: false``), both shared by the module; sends a small chest
study with dcmtk ``storescu``; kills the node with SIGKILL at one boundary; restarts it; and
asserts that

* every acknowledged instance was processed: one job, state ``done``, holding every instance,
  and the SR's finding cites every SOP Instance UID sent;
* Orthanc holds exactly one SR for the study, and it is current (no other SR names it as
  predecessor, docs/sr.md);
* the restarted node's ``/metrics`` moved (the delivery and the finished job are counted);
* the node's log (both runs) holds none of the planted identifiers (the session's PHI scan in
  ``tests/faults/conftest.py`` reads it again, with the vendor's log).

How each boundary is hit:

* ``ingest``: from outside: killed as soon as ``storescu`` returns (every instance
  acknowledged), well inside the (2 s) completion timer; no job exists yet;
* ``claimed``, ``deid``, ``sr``, ``sent``: the pipeline's test hook
  (``BLINDREAD_TEST_HOOKS=1`` + ``BLINDREAD_FAULT_KILL_AT=<boundary>``, in
  ``node/pipeline/orchestrate.py``) SIGKILLs the node exactly there: after the claim before any
  step result; after the de-id record before anything reaches the vendor; after the SR record
  before any C-STORE; after Orthanc acknowledged the SR before the deliver record;
* ``inference``: from outside, mid-batch: the vendor takes one image per request
  (``limits.max_request_bytes`` fits one ciphertext), so a 4-image study is 4 requests; the node
  is killed as soon as the vendor's chain grows by one, and the test checks that fewer than 4
  were served and no inference record was written.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from pydicom.uid import Comprehensive3DSRStorage, EnhancedSRStorage

from node.audit import load_public_key, public_key_path, verify_ledger
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
from tests.faults.conftest import FaultLogs
from tests.support.peers import Orthanc, free_port, peer_env, require_tool, wait_for_port

pytestmark = [pytest.mark.fault, pytest.mark.peer]

ROOT = Path(__file__).resolve().parents[2]
VENDOR = "demo-vendor"
MODEL = "demo-lesion"
IMAGES = 4  # one vendor request per image: "mid-batch" is after 1..3 of them
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


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory, fault_logs: FaultLogs) -> Iterator[Peers]:
    require_tool("storescu")
    root = tmp_path_factory.mktemp("kill-steps")
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
    fault_logs.add(root / "vendor" / "vendor.log", PlantedIdentity().needles())
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
            yield Peers(root, certs, port, root / "vendor" / "state" / "chain.jsonl", pacs,
                        root / "ckks")  # fmt: skip
    finally:
        stop_process(vendor, timeout=15)


# ---------------------------------------------------------------------- one node


def _node_config(tmp: Path, peers: Peers, quiet: float) -> tuple[NodeConfig, dict[str, Any]]:
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
    return parse_model(data, NodeConfig, "<kill-steps config>"), data


class NodeProc:
    """``python -m node node run`` in its own process, its stderr appended to ``log``."""

    def __init__(self, cfg: NodeConfig, cfg_path: Path, log: Path) -> None:
        self.cfg, self.cfg_path, self.log = cfg, cfg_path, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, kill_at: str | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BLINDREAD_")}
        if kill_at is not None:
            env |= {"BLINDREAD_TEST_HOOKS": "1", "BLINDREAD_FAULT_KILL_AT": kill_at}
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "node", "node", "run", "--config", str(self.cfg_path)],
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
        end = time.monotonic() + 30
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
        """End the restarted node. SIGKILL too: what is checked afterwards (the job store, the
        PACS, the log) is durable by then, and a clean SIGTERM stop costs ~4 s a case here
        (``tests/integration/test_node_crash.py`` checks the clean stop)."""
        if self.proc is not None and self.proc.poll() is None:
            self.kill()

    def scrape(self) -> dict[str, float]:
        url = f"http://127.0.0.1:{self.cfg.metrics.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:  # loopback http
            text = resp.read().decode()
        return {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line and not line.startswith("#")
        }


def _wait(cond: Callable[[], bool], timeout: float, what: str, log: Path | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.02)
    if not cond():
        tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
        pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{tail}")


def _jobs(state_dir: Path) -> list[tuple[int, str, int]]:
    """(id, state, number of files) of every job, read without the node's JobStore."""
    path = state_dir / "jobs.sqlite"
    if not path.exists():
        return []
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        rows = con.execute("SELECT id, state, files FROM jobs ORDER BY id").fetchall()
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        con.close()
    return [(int(i), str(s), len(json.loads(f))) for i, s, f in rows]


def _steps(state_dir: Path) -> set[str]:
    """Names of the step records of every job (``r0-deid``, ``r0-deliver-pacs``, ...)."""
    return {p.stem for p in (state_dir / "jobs").glob("*/steps/*.json")}


def _chain_len(peers: Peers) -> int:
    path = peers.vendor_chain
    return len(path.read_bytes().splitlines()) if path.exists() else 0


def _srs(pacs: Orthanc, study_uid: str) -> list[pydicom.Dataset]:
    out = []
    for inst in pacs.instances_of_study(study_uid):
        ds = pydicom.dcmread(io.BytesIO(pacs.file(inst["ID"])))
        if str(ds.SOPClassUID) in SR_CLASSES:
            out.append(ds)
    return out


# ---------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Boundary:
    name: str
    hook: str | None  # the test hook's kill point, or None: hit from outside
    # step records that must (and must not) exist when the node died
    done: tuple[str, ...]
    not_done: tuple[str, ...]


BOUNDARIES = [
    Boundary("ingest", None, (), ("received",)),
    Boundary("claimed", "claimed", (), ("received",)),
    Boundary("deid", "deid", ("received", "r0-deid"), ("r0-inference",)),
    Boundary("inference", None, ("r0-deid",), ("r0-inference",)),
    Boundary("sr", "sr", ("r0-inference", "r0-sr"), ("r0-deliver-pacs",)),
    Boundary("sent", "sent", ("r0-sr",), ("r0-deliver-pacs",)),
]


@pytest.mark.parametrize("boundary", BOUNDARIES, ids=[b.name for b in BOUNDARIES])
def test_sigkill_at_step_boundary_then_restart(
    boundary: Boundary, peers: Peers, tmp_path: Path, fault_logs: FaultLogs
) -> None:
    # the ingest case must kill inside the completion timer, even on a loaded machine
    cfg, data = _node_config(tmp_path, peers, quiet=2.0 if boundary.name == "ingest" else 0.6)
    state = cfg.node.state_dir
    shutil.copytree(peers.ckks_keys, cfg.node.keys / "ckks")
    cfg_path = tmp_path / "node.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    log = tmp_path / "node.log"

    who = PlantedIdentity()
    study = phantom_cr_study([False, True, False, False][:IMAGES], seed=len(boundary.name),
                             size=64, identity=who)  # fmt: skip
    study_uid = str(study[0].StudyInstanceUID)
    sent = {str(ds.SOPInstanceUID) for ds in study}
    needles = [*who.needles(), study_uid.encode(), str(study[0].SeriesInstanceUID).encode(),
               *(u.encode() for u in sent)]  # fmt: skip
    fault_logs.add(log, needles)
    files = write_study_files(study, tmp_path / "modality")

    node = NodeProc(cfg, cfg_path, log)
    node.start(kill_at=boundary.hook)
    try:
        chain_before = _chain_len(peers)
        # storescu exits 0 only if every C-STORE was answered with success: all acknowledged
        subprocess.run(
            [require_tool("storescu"), "-aet", "MODALITY", "-aec", "BLINDREAD", "127.0.0.1",
             str(cfg.scp.port), *map(str, files)],
            check=True, env=peer_env(), capture_output=True, timeout=60,
        )  # fmt: skip

        # ---- the kill, at the boundary
        if boundary.name == "ingest":
            node.kill()  # inside the 2 s completion timer
            assert _jobs(state) == [], "the study completed before the kill"
            assert len(list((state / "spool").rglob("*.dcm"))) == IMAGES
        elif boundary.name == "inference":
            _wait(lambda: _chain_len(peers) > chain_before, 40, "the vendor's first answer", log)
            node.kill()
            served = _chain_len(peers) - chain_before
            assert 1 <= served < IMAGES, f"not mid-batch: vendor served {served}/{IMAGES}"
        else:
            node.wait_killed()
        steps = _steps(state)
        assert set(boundary.done) <= steps, (boundary.name, sorted(steps))
        assert not set(boundary.not_done) & steps, (boundary.name, sorted(steps))
        if boundary.name == "sent":
            assert len(_srs(peers.pacs, study_uid)) == 1  # the PACS has it; the node did not record
        else:
            assert _srs(peers.pacs, study_uid) == []

        # ---- restart: the node finishes the job
        node.start()
        _wait(lambda: [s for _, s, _ in _jobs(state)] == ["done"], 60, "the job to finish", log)
        metrics: dict[str, float] = {}

        def counted() -> bool:  # the gauge follows the store on the next refresh
            try:
                metrics.update(node.scrape())
            except OSError:  # the endpoint is not up yet
                return False
            return metrics.get('blindread_jobs{state="done"}') == 1.0

        _wait(counted, 10, "jobs{state=done} in /metrics", log)
    finally:
        node.stop()

    # every acknowledged instance is in the one job, and cited by the SR
    [(_, state_name, n_files)] = _jobs(state)
    assert state_name == "done" and n_files == IMAGES
    srs = _srs(peers.pacs, study_uid)
    assert len(srs) == 1, f"{len(srs)} SRs for the study in the PACS"
    superseded = {u for ds in srs for u in read_result_sr(ds).predecessor_uids}
    current = [ds for ds in srs if str(ds.SOPInstanceUID) not in superseded]
    assert len(current) == 1
    [finding] = read_result_sr(current[0]).findings
    assert set(finding.source_sop_instance_uids) == sent

    # the audit ledger survived the SIGKILL (chain, signed head and anchor verify) and holds
    # one inference intent per attempt that got as far as the vendor, one received result
    ledger = cfg.audit_ledger
    key = load_public_key(public_key_path(ledger))
    report = verify_ledger(ledger, key, anchor=cfg.audit_anchor)
    assert report.ok, report.describe()
    kinds = [json.loads(line)["kind"] for line in ledger.read_text().splitlines()]
    attempts = 2 if boundary.name == "inference" else 1
    assert kinds.count("inference_requested") == attempts, kinds
    assert kinds.count("result_received") == 1, kinds
    assert kinds.count("study_received") == 1, kinds
    # the PACS acknowledged the SR twice in the "sent" case (once before the kill)
    assert kinds.count("sr_delivered") == (2 if boundary.name == "sent" else 1), kinds

    # the restarted node's metrics moved: it delivered the SR (again, for "sent": the PACS
    # kept its first copy) and counts the finished job
    assert metrics.get('blindread_sr_deliveries_total{outcome="success"}', 0) >= 1, metrics
    if boundary.name == "ingest":
        assert metrics.get("blindread_studies_completed_total", 0) == 1, metrics

    # no planted identifier in the node's log (both runs)
    text = log.read_bytes()
    assert text, "the node wrote no log"
    leaked = [n.decode() for n in needles if n in text]
    assert not leaked, f"PHI in the node log: {leaked}"


def test_kill_hook_refused_without_test_hooks(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The kill hook is inert unless BLINDREAD_TEST_HOOKS=1 is set too (and names a boundary)."""
    from node.pipeline.orchestrate import _kill_point_from_env

    monkeypatch.delenv("BLINDREAD_TEST_HOOKS", raising=False)
    monkeypatch.delenv("BLINDREAD_FAULT_KILL_AT", raising=False)
    assert _kill_point_from_env() is None
    monkeypatch.setenv("BLINDREAD_FAULT_KILL_AT", "sr")
    assert _kill_point_from_env() is None
    assert "test hook refused" in caplog.text
    monkeypatch.setenv("BLINDREAD_TEST_HOOKS", "1")
    assert _kill_point_from_env() == "sr"
    monkeypatch.setenv("BLINDREAD_FAULT_KILL_AT", "nowhere")
    assert _kill_point_from_env() is None
