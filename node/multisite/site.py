"""A hospital as one site: compute its vector locally, join the round, verify the ledger.

:func:`prepare_contribution` runs ``blindread validate``'s own code path
(:func:`node.validate.run_validation`: labels, the pipeline's preprocessing, encrypted
inference through the configured vendor, decryption) and turns the probabilities and labels
into the site's vector (:func:`node.multisite.vector.encode`). The vector stays in the site's
folder (0600); only its SecAgg+-masked form leaves, sent by the ClientApp that the site's
Flower SuperNode (:func:`start_supernode`, TLS to the SuperLink, node authentication with the
site's EC key) runs for each message of the round.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from durable_io import atomic_write
from node.audit import AuditEntry, load_public_key, verify_ledger
from node.config import NodeConfig
from node.config.multisite import MultisiteSiteSection
from node.multisite.coordinator import _flwr_env, flwr_bin
from node.multisite.errors import MultisiteError
from node.multisite.vector import LAYOUT, encode
from node.validate import ValidationResult, ValidationSettings, run_validation

__all__ = [
    "Contribution",
    "InclusionReport",
    "generate_site_key",
    "join_round",
    "prepare_contribution",
    "site_dir",
    "site_section",
    "start_supernode",
    "verify_inclusion",
]

BackendFactory = Callable[[str], Any]


def site_section(cfg: NodeConfig) -> MultisiteSiteSection:
    if cfg.multisite is None:
        raise MultisiteError("the node config has no 'multisite:' section (see docs/multisite.md)")
    return cfg.multisite


def site_dir(cfg: NodeConfig) -> Path:
    section = site_section(cfg)
    return section.state_dir or cfg.node.state_dir / "multisite"


def generate_site_key(out_dir: Path, name: str = "site") -> tuple[Path, Path]:
    """A P-384 key pair in OpenSSH format (what Flower's node authentication reads)."""
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP384R1())
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                             serialization.NoEncryption())  # fmt: skip
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                        serialization.PublicFormat.OpenSSH)  # fmt: skip
    kp, pp = out_dir / f"{name}.key", out_dir / f"{name}.pub"
    atomic_write(kp, priv, mode=0o600)
    atomic_write(pp, pub + b"\n", mode=0o644)
    return kp, pp


@dataclass(frozen=True)
class Contribution:
    folder: Path
    vector: np.ndarray
    result: ValidationResult


def prepare_contribution(
    cfg: NodeConfig, node_config_path: Path, settings: ValidationSettings,
    backends: BackendFactory, *, stream: TextIO | None = None,
) -> Contribution:
    """Validate locally (encrypted, as ``blindread validate``) and store this site's vector."""
    section = site_section(cfg)
    from node.audit import open_ledger

    result = run_validation(cfg, settings, backends, audit=open_ledger(cfg), stream=stream)
    probs = np.array([c.probability for c in result.cases], dtype=np.float64)
    labels = np.array([c.label for c in result.cases], dtype=np.int64)
    vector = encode(probs, labels, result.threshold)
    folder = site_dir(cfg)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    for stale in ("outcome.json", "contributed.json", "status.json", "sent_bytes.json"):
        (folder / stale).unlink(missing_ok=True)
    info: dict[str, Any] = {
        "site": section.site, "model": result.model, "model_version": result.model_version,
        "layout": LAYOUT, "node_config": str(node_config_path.resolve()),
        "output": result.output, "threshold": result.threshold,
    }  # fmt: skip
    if section.publish_own_figures:
        info["published"] = {"cases": len(result.cases), "auroc": round(result.auroc, 4),
                             "brier": round(result.brier, 4),
                             "sensitivity": round(result.confusion.sensitivity, 4),
                             "specificity": round(result.confusion.specificity, 4)}  # fmt: skip
    with (folder / "vector.npy.tmp").open("wb") as fh:
        np.save(fh, vector, allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(folder / "vector.npy.tmp", 0o600)
    os.replace(folder / "vector.npy.tmp", folder / "vector.npy")
    atomic_write(folder / "contribution.json", json.dumps(info, indent=2).encode(), mode=0o600)
    return Contribution(folder, vector, result)


def start_supernode(cfg: NodeConfig, log_path: Path | None = None) -> subprocess.Popen[bytes]:
    """This site's Flower SuperNode (TLS to the SuperLink, node authentication)."""
    section = site_section(cfg)
    folder = site_dir(cfg)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    import socket

    with socket.socket() as s:  # the SuperNode's local runtime API (its ClientApps only)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = (log_path or folder / "supernode.log").open("ab")
    try:
        return subprocess.Popen(
            [flwr_bin("flower-supernode"), "--superlink", section.superlink,
             "--root-certificates", str(section.ca),
             "--auth-supernode-private-key", str(section.auth_key),
             "--node-config", f'site-dir="{folder}"', "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=_flwr_env(folder / "flwr"),
            start_new_session=True,
        )  # fmt: skip
    finally:
        out.close()


def join_round(cfg: NodeConfig, *, stream: TextIO | None = None,
               timeout: float = 3600.0) -> dict[str, Any]:  # fmt: skip
    """Run the SuperNode until the coordinator tells the outcome of the round."""
    out = stream if stream is not None else sys.stderr
    folder = site_dir(cfg)
    proc = start_supernode(cfg)
    last = ""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            status = folder / "status.json"
            if status.exists():
                try:
                    text = json.loads(status.read_text())["status"]
                except (ValueError, KeyError, OSError):
                    text = last
                if text != last:
                    print(text, file=out, flush=True)
                    last = text
            if (folder / "outcome.json").exists():
                data: dict[str, Any] = json.loads((folder / "outcome.json").read_text())
                return data
            if proc.poll() is not None:
                raise MultisiteError(f"the SuperNode exited with code {proc.returncode} (see "
                                     f"{folder / 'supernode.log'})")  # fmt: skip
            time.sleep(0.5)
        raise MultisiteError(f"no outcome from the coordinator in {timeout:.0f}s")
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass(frozen=True)
class InclusionReport:
    ledger_ok: str
    included: list[dict[str, Any]]
    missing: list[dict[str, Any]]

    @property
    def ok(self) -> bool:
        return not self.missing


def verify_inclusion(
    site: str, own_entries: list[AuditEntry], coordinator_ledger: Path, coordinator_key: Path,
) -> InclusionReport:
    """Verify the coordinator's ledger (chain, signatures, signed head) and find, for every
    ``multisite_contributed`` entry of this site's ledger, the coordinator's record of the
    same masked-vector hash from this site in the same run."""
    report = verify_ledger(coordinator_ledger, load_public_key(coordinator_key))
    if not report.ok:
        raise MultisiteError(f"coordinator ledger {coordinator_ledger}: {report.describe()}")
    rounds: dict[str, dict[str, Any]] = {}
    with coordinator_ledger.open(encoding="utf-8") as fh:
        for line in fh:
            e = AuditEntry.from_json(line)
            if e.kind == "multisite_round":
                rounds[str(e.details["run"])] = dict(e.details)
    included: list[dict[str, Any]] = []
    missing: list[dict[str, Any]] = []
    for e in own_entries:
        if e.kind != "multisite_contributed" or e.details.get("site") != site:
            continue
        d = dict(e.details)
        rnd = rounds.get(str(d["run"]))
        hit = rnd is not None and any(
            c["site"] == site and c["masked_vector_sha256"] == d["masked_vector_sha256"]
            and c["summed"] for c in rnd["contributions"]
        )  # fmt: skip
        row = {"run": d["run"], "masked_vector_sha256": d["masked_vector_sha256"],
               "released": bool(rnd and rnd["released"]),
               "reason": rnd["reason"] if rnd else "run not in the coordinator ledger"}
        (included if hit else missing).append(row)
    return InclusionReport(report.describe(), included, missing)
