"""Multi-site validation over Flower's Deployment Engine: one SuperLink (TLS, node
authentication) and 5 SuperNodes as separate processes on loopback, SecAgg+ rounds.

Each site's vector comes from ``blindread validate``'s own code path
(:func:`node.validate.run_validation` -> :func:`node.multisite.site.prepare_contribution`) on
synthetic phantoms split unevenly (5 to 16 images, different prevalence). For speed the model
outputs are computed in plaintext with onnxruntime (a backend handed to run_validation): the
encrypted path of the same run_validation is covered by tests/integration/test_validate.py
against a real vendor process. The federation is started once (module fixture) and reused;
the rounds run in order: full round, malformed vector, a site dropping out mid-round, fewer
sites than the minimum.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from node.audit import AuditEntry, load_public_key, verify_ledger
from node.cli import main
from node.config import NodeConfig, load_config
from node.demo.localpacs import free_port
from node.demo.phantom_study import phantom_cr_study, write_study_files
from node.demo.stack import DEMO_MODEL_DIR
from node.multisite.config import load_coordinator_config
from node.multisite.coordinator import Federation
from node.multisite.site import (
    generate_site_key,
    prepare_contribution,
    site_dir,
    start_supernode,
    verify_inclusion,
)
from node.multisite.vector import LENGTH
from node.pipeline import InferenceOutcome
from node.validate import ValidationSettings
from node.validate.stats import auroc, brier_score, confusion_at
from secure_infer.manifest import Manifest, load_manifest
from secure_infer.vendor.certs import create_ca, issue_server_cert

pytestmark = pytest.mark.slow

# (images, lesion fraction): uneven sizes and prevalences
SPLITS = [(5, 0.4), (7, 0.15), (9, 0.55), (12, 0.3), (16, 0.5)]
FLIP = {(1, 2), (3, 0), (4, 5)}  # (site, case) labels contradicting the phantom: AUROC < 1


class OnnxBackend:
    """Plaintext stand-in for the vendor (see the module docstring)."""

    def __init__(self) -> None:
        self.manifest_ = load_manifest(DEMO_MODEL_DIR / "manifest.yaml")
        self.sess = ort.InferenceSession(str(DEMO_MODEL_DIR / "model.onnx"))

    def manifest(self, model: str) -> Manifest:
        return self.manifest_.public()

    def infer(self, model: str, batch: np.ndarray) -> InferenceOutcome:
        p = self.sess.run(None, {"image": batch.astype(np.float32)})[0]
        return InferenceOutcome(
            probabilities=p.astype(float).tolist(), model_version=self.manifest_.version,
            context_sha256="c", request_sha256=["q"], response_sha256=["r"], bytes_up=1,
            bytes_down=1, timings={}, parameters={},
        )  # fmt: skip


@dataclass
class Site:
    name: str
    config_path: Path
    cfg: NodeConfig
    probs: np.ndarray
    labels: np.ndarray
    vector: np.ndarray
    proc: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the SuperNode and its ClientApps
            self.proc.wait()
        self.proc = None


@dataclass
class Fed:
    root: Path
    federation: Federation
    sites: list[Site]
    coordinator_config: Path
    rounds: list[object] = field(default_factory=list)


def _dataset(root: Path, index: int, n: int, prevalence: float) -> tuple[Path, Path]:
    k = max(1, round(n * prevalence))
    lesions = [i < k for i in range(n)]
    study = phantom_cr_study(lesions, seed=100 + index, size=96)
    data = root / "data"
    paths = write_study_files(study, data)
    labels = [int(les) ^ int((index, i) in FLIP) for i, les in enumerate(lesions)]
    csv = root / "labels.csv"
    csv.write_text("path,label\n" + "".join(
        f"{p.relative_to(data).as_posix()},{lab}\n" for p, lab in zip(paths, labels, strict=True)
    ))  # fmt: skip
    return data, csv


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    root = tmp_path_factory.mktemp("multisite")
    create_ca(root / "tls" / "ca")
    server = issue_server_cert(root / "tls" / "ca", root / "tls" / "superlink")
    ca = root / "tls" / "ca" / "ca.crt"
    port = free_port()
    names = [f"hospital-{c}" for c in "abcde"]
    keys = {n: generate_site_key(root / "keys", n) for n in names}
    coord = {
        "coordinator": {"state_dir": str(root / "coordinator"), "host": "127.0.0.1",
                        "port": port, "tls": {"cert": str(server.cert), "key": str(server.key),
                                              "ca": str(ca)}},
        "model": {"name": "demo-lesion", "version": "1.0.0"},
        "threshold": 0.5,
        "sites": {n: {"public_key": str(keys[n][1])} for n in names},
        "minimum": {"sites": 3, "positives": 3, "negatives": 3},
        "aggregation": {"wait_for_sites_seconds": 180, "stage_timeout_seconds": 90,
                        "record_masked_vectors": True},
        "report": {"bootstrap": 200},
    }  # fmt: skip
    coord_path = root / "coordinator.yaml"
    coord_path.write_text(yaml.safe_dump(coord))
    cfg = load_coordinator_config(coord_path)
    manifest = load_manifest(DEMO_MODEL_DIR / "manifest.yaml")
    assert manifest.version == "1.0.0"
    federation = Federation(cfg, coord_path)
    sites: list[Site] = []
    try:
        federation.start()
        backend = OnnxBackend()
        for i, (name, (n, prev)) in enumerate(zip(names, SPLITS, strict=True)):
            sroot = root / name
            data, csv = _dataset(sroot, i, n, prev)
            node_cfg = {
                "node": {"name": name, "state_dir": str(sroot / "state")},
                "vendors": {"v": {"url": "https://127.0.0.1:9", "client_cert": str(sroot / "x"),
                                  "client_key": str(sroot / "x"), "ca": str(sroot / "x"),
                                  "models": ["demo-lesion"], "max_attempts": 1}},
                "multisite": {"site": name, "superlink": f"127.0.0.1:{port}", "ca": str(ca),
                              "auth_key": str(keys[name][0]),
                              "coordinator_public_key": str(cfg.ledger) + ".pub"},
            }  # fmt: skip
            path = sroot / "node.yaml"
            path.write_text(yaml.safe_dump(node_cfg))
            ncfg = load_config(path)
            contrib = prepare_contribution(
                ncfg, path, ValidationSettings("demo-lesion", data, csv, bootstrap=1),
                lambda _name: backend, stream=io.StringIO(),
            )  # fmt: skip
            probs = np.array([c.probability for c in contrib.result.cases])
            labels = np.array([c.label for c in contrib.result.cases])
            site = Site(name, path, ncfg, probs, labels, contrib.vector)
            site.proc = start_supernode(ncfg)
            sites.append(site)
        yield Fed(root, federation, sites, coord_path)
    finally:
        for s in sites:
            s.stop()
        federation.stop()


def _central(sites: list[Site]) -> dict[str, float]:
    p = np.concatenate([s.probs for s in sites])
    y = np.concatenate([s.labels for s in sites])
    c = confusion_at(p, y, 0.5)
    return {"auroc": auroc(p, y), "sensitivity": c.sensitivity, "specificity": c.specificity,
            "brier": brier_score(np.clip(p, 0, 1), y), "n": float(p.size)}  # fmt: skip


def _own_entries(site: Site) -> list[AuditEntry]:
    with site.cfg.audit_ledger.open(encoding="utf-8") as fh:
        return [AuditEntry.from_json(line) for line in fh if line.strip()]


def test_1_pooled_round_equals_central_and_coordinator_sees_only_masked(fed: Fed) -> None:
    progress: list[str] = []
    outcome = fed.federation.run_round(progress=progress.append, timeout=900)
    assert outcome.released, outcome.reason
    assert any("sites connected: 5/5" in line for line in progress)
    report = json.loads((outcome.round_dir / "report" / "report.json").read_text())
    central = _central(fed.sites)
    assert report["cases"]["n"] == central["n"] == sum(n for n, _ in SPLITS)
    assert abs(report["auroc"]["value"] - central["auroc"]) < 1e-3
    assert abs(report["at_threshold"]["sensitivity"] - central["sensitivity"]) < 1e-3
    assert abs(report["at_threshold"]["specificity"] - central["specificity"]) < 1e-3
    assert abs(report["brier"] - central["brier"]) < 1e-3
    assert report["auroc"]["ci_low"] <= report["auroc"]["value"] <= report["auroc"]["ci_high"]
    assert report["published_by_sites"] == {} and "per_case" not in report
    for png in ("roc.png", "calibration.png"):
        assert (outcome.round_dir / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # what the coordinator received: masked, unlike every site's true vector
    for site in fed.sites:
        masked = np.load(outcome.round_dir / f"masked-{site.name}.npy")
        assert masked.shape == (LENGTH,)
        for other in fed.sites:
            assert not np.array_equal(masked, other.vector)
            assert not np.array_equal(masked, other.vector + (1 << 20))  # not merely offset
        assert np.count_nonzero(masked) > LENGTH * 0.99  # uniform mask, not sparse counts

    # accountability: each site's signed ledger holds the hash the coordinator recorded
    coord_key = load_public_key(str(fed.federation.cfg.ledger) + ".pub")
    assert verify_ledger(fed.federation.cfg.ledger, coord_key).ok
    recorded = {c["site"]: c["masked_vector_sha256"] for c in outcome.data["contributions"]}
    for site in fed.sites:
        own = [e for e in _own_entries(site) if e.kind == "multisite_contributed"
               and e.details["run"] == outcome.data["run"]]  # fmt: skip
        assert len(own) == 1 and own[0].details["masked_vector_sha256"] == recorded[site.name]
        copy = site_dir(site.cfg) / "coordinator-ledger.jsonl"
        assert copy.exists()
        inc = verify_inclusion(site.name, own, copy, Path(str(fed.federation.cfg.ledger) + ".pub"))
        assert inc.ok and inc.included[0]["released"]
    assert main(["multisite", "verify", "--config", str(fed.sites[0].config_path)]) == 0


def test_2_malformed_vector_is_refused_and_named(fed: Fed) -> None:
    site = fed.sites[2]
    vec_path = site_dir(site.cfg) / "vector.npy"
    np.save(vec_path, np.ones(LENGTH - 7, dtype=np.int64))
    try:
        outcome = fed.federation.run_round(timeout=900)
    finally:
        np.save(vec_path, site.vector)
    assert not outcome.released
    assert f"site {site.name}" in outcome.reason and "shape" in outcome.reason
    assert not (outcome.round_dir / "report").exists()


def test_3_site_dropping_out_mid_round(fed: Fed) -> None:
    gone = fed.sites[1]
    status = site_dir(gone.cfg) / "status.json"
    status.unlink(missing_ok=True)
    killed: list[str] = []

    def killer() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                text = json.loads(status.read_text())["status"]
            except (OSError, ValueError, KeyError):
                text = ""
            if text == "secure aggregation: collect_masked_vectors":
                # it has its neighbours' key shares and is computing its masked vector
                gone.stop()
                killed.append(text)
                return
            time.sleep(0.01)  # masking takes ~0.1 s: catch it before its reply leaves

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    outcome = fed.federation.run_round(timeout=900)
    t.join(timeout=5)
    assert killed, "the site was never seen in the masked-vector stage"
    assert outcome.released, outcome.reason
    assert outcome.data["dropped"] == [gone.name]
    remaining = [s for s in fed.sites if s is not gone]
    report = json.loads((outcome.round_dir / "report" / "report.json").read_text())
    central = _central(remaining)
    assert report["sites"]["summed"] == sorted(s.name for s in remaining)
    assert report["cases"]["n"] == central["n"]
    assert abs(report["auroc"]["value"] - central["auroc"]) < 1e-3
    assert abs(report["brier"] - central["brier"]) < 1e-3


def test_4_fewer_sites_than_the_minimum_releases_nothing(fed: Fed) -> None:
    for s in fed.sites[2:]:
        s.stop()  # 1 (a) left: hospital-b dropped in test 3
    data = yaml.safe_load(fed.coordinator_config.read_text())
    data["aggregation"]["wait_for_sites_seconds"] = 20
    short = fed.root / "coordinator-short.yaml"
    short.write_text(yaml.safe_dump(data))
    fed.federation.config_path = short
    outcome = fed.federation.run_round(timeout=900)
    assert not outcome.released
    assert "minimum is 3" in outcome.reason or "too few sites" in outcome.reason
    assert not (outcome.round_dir / "report").exists()
    ledger = [json.loads(x) for x in fed.federation.cfg.ledger.read_text().splitlines()]
    rounds = [e for e in ledger if e["kind"] == "multisite_round"]
    assert [r["details"]["released"] for r in rounds][-2:] == [True, False]  # 3, 4
