"""The coordinator: runs Flower's SuperLink (TLS, node authentication), registers the sites'
keys, submits the round with ``flwr run`` and releases the pooled report only if the minimum
participation holds.

Processes (Flower's Deployment Engine): ``flower-superlink`` is started here and stopped when
the round ends; it starts the ServerApp (:mod:`node.multisite.flwr_app`) for the submitted
run. The Flower app itself is a FAB built from a one-file project written into the state
folder (its components point at ``node.multisite.flwr_app``, which every party has installed),
so nothing is installed at run time (``--disable-runtime-dependency-installation``).

:func:`finish_round` runs inside the ServerApp after SecAgg+: it decodes the sum, applies the
minimums, writes the report, appends the round to the coordinator's ledger and sends each
included site a copy of that ledger.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from durable_io import atomic_write
from node.audit import AuditLedger
from node.multisite.config import CoordinatorConfig, load_coordinator_config
from node.multisite.errors import MultisiteError, RoundRefusedError, VectorError
from node.multisite.pooled import pooled_figures
from node.multisite.vector import LAYOUT, decode

__all__ = ["Federation", "RoundOutcome", "finish_round", "flwr_bin", "run_coordinator"]

log = logging.getLogger(__name__)

_FAB_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "blindread-multisite"
version = "1.0.0"
description = "BlindRead multi-site validation round (secure aggregation, SecAgg+)"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "blindread"

[tool.flwr.app.components]
serverapp = "node.multisite.flwr_app:server_app"
clientapp = "node.multisite.flwr_app:client_app"

[tool.flwr.app.config]
coordinator-config = ""
round-dir = ""
"""


def flwr_bin(name: str) -> str:
    """A Flower console script of this interpreter's environment (where flwr is installed)."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        raise MultisiteError(f"{name}: not found; install the 'multisite' extra (flwr)")
    return found


def _flwr_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["FLWR_HOME"] = str(home)
    # Flower starts its helpers (flower-superexec, flwr-serverapp/-clientapp) by name
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("PYTHONPATH", "")
    root = str(Path(__file__).resolve().parents[2])  # so flwr-serverapp imports this node
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env["PYTHONPATH"] else "")
    return env


def _wait_port(host: str, port: int, seconds: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise MultisiteError(f"flower-superlink exited with code {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.3)
    raise MultisiteError(f"flower-superlink did not listen on {host}:{port} in {seconds:.0f}s")


@dataclass
class Federation:
    """A running SuperLink of one coordinator config (start, register sites, submit, stop)."""

    cfg: CoordinatorConfig
    config_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def home(self) -> Path:
        return self.cfg.coordinator.state_dir / "flwr"

    def start(self, startup_seconds: float = 120.0) -> None:
        c = self.cfg.coordinator
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        (self.home / "config.toml").write_text(
            "[superlink]\ndefault = \"blindread\"\n\n[superlink.blindread]\n"
            f"address = \"{c.host}:{c.port}\"\nroot-certificates = \"{c.tls.ca}\"\n"
        )
        app = self.home / "app"
        app.mkdir(exist_ok=True)
        (app / "pyproject.toml").write_text(_FAB_PYPROJECT)
        log_file = (self.home / "superlink.log").open("ab")
        self.proc = subprocess.Popen(
            [flwr_bin("flower-superlink"), "--ssl-certfile", str(c.tls.cert),
             "--ssl-keyfile", str(c.tls.key), "--ssl-ca-certfile", str(c.tls.ca),
             "--enable-supernode-auth", "--disable-runtime-dependency-installation",
             "--database", str(self.home / "superlink.db"),
             "--host", c.host, "--port", str(c.port)],
            stdout=log_file, stderr=subprocess.STDOUT, env=_flwr_env(self.home),
            start_new_session=True,
        )  # fmt: skip
        log_file.close()
        _wait_port(c.host, c.port, startup_seconds, self.proc)
        self.register_sites()

    def _flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run([flwr_bin("flwr"), *args], capture_output=True, text=True,
                              env=_flwr_env(self.home), timeout=timeout, check=False)  # fmt: skip

    def register_sites(self) -> None:
        """Register each configured site's public key (idempotent: known keys are kept)."""
        listed = self._flwr("supernode", "list", "blindread", "--format", "json")
        known = listed.stdout
        for name, entry in self.cfg.sites.items():
            if f'"{name}"' in known:
                continue
            done = self._flwr("supernode", "register", str(entry.public_key), "blindread",
                              "--name", name, "--format", "json")  # fmt: skip
            if done.returncode != 0:
                raise MultisiteError(f"cannot register site {name!r}: "
                                     f"{(done.stdout + done.stderr).strip()[-400:]}")  # fmt: skip

    def run_round(self, progress: Callable[[str], None] | None = None,
                  timeout: float = 3600.0) -> RoundOutcome:  # fmt: skip
        """Submit one round and wait for its outcome (streamed progress lines)."""
        rounds = self.cfg.rounds_dir
        rounds.mkdir(parents=True, exist_ok=True, mode=0o750)
        round_dir = rounds / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        k = 1
        while round_dir.exists():
            k += 1
            round_dir = rounds / (time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{k}")
        round_dir.mkdir(mode=0o750)
        cmd = [flwr_bin("flwr"), "run", str(self.home / "app"), "blindread", "--stream",
               "--run-config", f'coordinator-config="{self.config_path.resolve()}" '
               f'round-dir="{round_dir}"']  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=_flwr_env(self.home), text=True)  # fmt: skip
        deadline = time.monotonic() + timeout
        assert proc.stdout is not None
        for line in proc.stdout:
            if "[blindread]" in line and progress is not None:
                progress(line.split("[blindread]", 1)[1].strip())
            if (round_dir / "outcome.json").exists() or time.monotonic() > deadline:
                break
        path = round_dir / "outcome.json"
        # the log stream can end before the run does (flwr run --stream gives up on a slow
        # SuperLink); the run goes on in the SuperLink, so wait for its outcome file
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(1.0)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if not path.exists():
            raise MultisiteError(f"the round ended without an outcome (see {self.home}/"
                                 "superlink.log); nothing was released")  # fmt: skip
        return RoundOutcome(round_dir, json.loads(path.read_text()))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@dataclass(frozen=True)
class RoundOutcome:
    round_dir: Path
    data: dict[str, Any]

    @property
    def released(self) -> bool:
        return bool(self.data.get("released"))

    @property
    def reason(self) -> str:
        return str(self.data.get("reason", ""))


def _ledger(cfg: CoordinatorConfig) -> AuditLedger:
    return AuditLedger.open(cfg.ledger, cfg.ledger_key)


def finish_round(
    cfg: CoordinatorConfig,
    round_dir: Path,
    outcome: dict[str, Any],
    average: np.ndarray | None,
    included: dict[int, str],
    received: dict[int, str],
    names: dict[int, str],
    refused: str | None,
    grid: Any,
    *,
    metrics: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Decode, check, report, record and tell the sites (inside the ServerApp)."""
    figures_data: dict[str, Any] | None = None
    k = len(included)
    if refused is None and average is not None:
        try:
            for site, m in sorted((metrics or {}).items()):
                want = (cfg.model.name, cfg.model.version, LAYOUT)
                got = (m.get("model"), m.get("model_version"), m.get("layout"))
                if got != want:
                    raise RoundRefusedError(f"site {site}: contributed for model {got[0]} "
                                       f"{got[1]} ({got[2]}), the round is {want[0]} "
                                       f"{want[1]} ({want[2]})")  # fmt: skip
            total = np.asarray(average, dtype=np.float64) * k
            whole = np.round(total)
            if not np.all(np.abs(total - whole) < 1e-6):
                raise VectorError("the unmasked sum is not whole numbers")
            sums = decode(whole.astype(np.int64), sites=k)
            low = cfg.minimum
            if k < low.sites:
                raise RoundRefusedError(f"only {k} site(s) in the sum (dropped: "
                                   f"{', '.join(outcome.get('dropped', [])) or 'none'}); "
                                   f"the minimum is {low.sites}")  # fmt: skip
            if sums.positives < low.positives or sums.negatives < low.negatives:
                raise RoundRefusedError(
                    f"the pool has {sums.positives} positive and {sums.negatives} negative "
                    f"cases; the minimum is {low.positives} and {low.negatives}")
            figures = pooled_figures(sums, cfg.threshold, bootstrap=cfg.report.bootstrap,
                                     seed=cfg.report.seed)  # fmt: skip
            from node.multisite.report import write_pooled_report

            published = {s: json.loads(v["published"]) for s, v in (metrics or {}).items()
                         if "published" in v}  # fmt: skip
            figures_data = write_pooled_report(
                figures, round_dir / "report", model=cfg.model.name, version=cfg.model.version,
                output=cfg.output or "", run=outcome["run"],
                sites=sorted(included.values()), published=published,
            )  # fmt: skip
        except (RoundRefusedError, VectorError) as exc:
            refused = str(exc)
    released = refused is None
    entry = {
        "run": outcome["run"], "model": cfg.model.name, "model_version": cfg.model.version,
        "layout": LAYOUT, "released": released, "reason": refused or "",
        "minimum": {"sites": cfg.minimum.sites, "positives": cfg.minimum.positives,
                    "negatives": cfg.minimum.negatives},
        "contributions": [
            {"site": names.get(nid, f"node {nid}"), "node_id": str(nid),
             "masked_vector_sha256": digest, "summed": nid in included}
            for nid, digest in sorted(received.items(), key=lambda kv: names.get(kv[0], ""))
        ],
        "dropped": outcome.get("dropped", []), "missing": outcome.get("missing", []),
    }  # fmt: skip
    if figures_data is not None:
        entry["report_sha256"] = figures_data["_sha256"]
    ledger = _ledger(cfg)
    ledger.append("multisite_round", entry)
    result = {**outcome, "released": released, "reason": refused or "",
              "contributions": entry["contributions"],
              "report": str(round_dir / "report") if released else None}  # fmt: skip
    dropped = set(outcome.get("dropped", []))
    # the sites that are still there (a dropped one would only make the coordinator wait)
    targets = set(included) or {nid for nid, site in names.items() if site not in dropped}
    _send_ledger(cfg, grid, targets, outcome["run"], released, refused or "")
    atomic_write(round_dir / "outcome.json", json.dumps(result, indent=2).encode(), mode=0o644)


def _send_ledger(cfg: CoordinatorConfig, grid: Any, node_ids: set[int], run: str,
                 released: bool, reason: str) -> None:  # fmt: skip
    """Every site of the round gets the coordinator ledger (to verify its inclusion)."""
    if not node_ids:
        return
    from flwr.app import ConfigRecord, Message, RecordDict
    from flwr.app.message_type import MessageType

    from node.audit import head_path, public_key_path
    from node.multisite.flwr_app import LEDGER_QUERY

    record = ConfigRecord({
        "run": run, "released": released, "reason": reason,
        "ledger": cfg.ledger.read_bytes(),
        "head": head_path(cfg.ledger).read_bytes(),
        "public_key": public_key_path(cfg.ledger).read_bytes(),
    })  # fmt: skip
    msgs = [Message(RecordDict({LEDGER_QUERY: record}), dst_node_id=nid,
                    message_type=MessageType.QUERY) for nid in sorted(node_ids)]  # fmt: skip
    try:
        grid.send_and_receive(msgs, timeout=cfg.aggregation.stage_timeout_seconds)
    except Exception as exc:  # a site gone after the round still has its own ledger entry
        log.warning("could not send the ledger to every site: %s", type(exc).__name__)


def run_coordinator(config_path: Path, stream: TextIO | None = None) -> RoundOutcome:
    """``blindread multisite coordinator``: one round, start to finish."""
    out = stream if stream is not None else sys.stderr
    cfg = load_coordinator_config(config_path)
    fed = Federation(cfg, config_path)
    try:
        print(f"starting the SuperLink on {cfg.coordinator.host}:{cfg.coordinator.port} "
              f"(TLS, node authentication; {len(cfg.sites)} sites registered)", file=out)
        fed.start()
        return fed.run_round(progress=lambda line: print(line, file=out, flush=True))
    finally:
        fed.stop()
