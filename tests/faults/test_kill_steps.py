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

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from node.audit import load_public_key, public_key_path, verify_ledger
from node.demo.phantom_study import PlantedIdentity, phantom_cr_study, write_study_files
from tests.faults.conftest import FaultLogs
from tests.faults.realnode import (
    NodeProc,
    Peers,
    assert_one_current_sr,
    chain_len,
    jobs,
    node_config,
    srs,
    steps,
    wait,
)
from tests.support.peers import peer_env, require_tool

pytestmark = [pytest.mark.fault, pytest.mark.peer]

IMAGES = 4  # one vendor request per image: "mid-batch" is after 1..3 of them


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
    cfg, data = node_config(tmp_path, peers, quiet=2.0 if boundary.name == "ingest" else 0.6)
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
        chain_before = chain_len(peers)
        # storescu exits 0 only if every C-STORE was answered with success: all acknowledged
        subprocess.run(
            [require_tool("storescu"), "-aet", "MODALITY", "-aec", "BLINDREAD", "127.0.0.1",
             str(cfg.scp.port), *map(str, files)],
            check=True, env=peer_env(), capture_output=True, timeout=60,
        )  # fmt: skip

        # ---- the kill, at the boundary
        if boundary.name == "ingest":
            node.kill()  # inside the 2 s completion timer
            assert jobs(state) == [], "the study completed before the kill"
            assert len(list((state / "spool").rglob("*.dcm"))) == IMAGES
        elif boundary.name == "inference":
            wait(lambda: chain_len(peers) > chain_before, 40, "the vendor's first answer", log)
            node.kill()
            served = chain_len(peers) - chain_before
            assert 1 <= served < IMAGES, f"not mid-batch: vendor served {served}/{IMAGES}"
        else:
            node.wait_killed()
        records = steps(state)
        assert set(boundary.done) <= records, (boundary.name, sorted(records))
        assert not set(boundary.not_done) & records, (boundary.name, sorted(records))
        if boundary.name == "sent":
            assert len(srs(peers.pacs, study_uid)) == 1  # the PACS has it; the node did not record
        else:
            assert srs(peers.pacs, study_uid) == []

        # ---- restart: the node finishes the job
        node.start()
        wait(lambda: [s for _, s, _ in jobs(state)] == ["done"], 60, "the job to finish", log)
        metrics: dict[str, float] = {}

        def counted() -> bool:  # the gauge follows the store on the next refresh
            try:
                metrics.update(node.scrape())
            except OSError:  # the endpoint is not up yet
                return False
            return metrics.get('blindread_jobs{state="done"}') == 1.0

        wait(counted, 10, "jobs{state=done} in /metrics", log)
    finally:
        node.stop()

    # every acknowledged instance is in the one job, and cited by the SR
    [(_, state_name, n_files)] = jobs(state)
    assert state_name == "done" and n_files == IMAGES
    assert_one_current_sr(peers.pacs, study_uid, sent)

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
