"""The Flower apps of a multi-site round: the coordinator's ServerApp and each site's ClientApp.

Flower's Deployment Engine runs them: the coordinator's SuperLink starts the ServerApp
(``flwr-serverapp``) for a run submitted with ``flwr run``; each site's SuperNode starts the
ClientApp (``flwr-clientapp``) for each message. Secure aggregation is Flower's SecAgg+
(:class:`flwr.server.workflow.SecAggPlusWorkflow` on the coordinator,
:func:`flwr.client.mod.secaggplus_mod` at the sites): the coordinator receives each site's
vector only masked (pairwise masks that cancel in the sum plus a private mask it can remove only
with shares from enough other sites) and learns the sum alone.

SecAgg+ aggregates *weighted averages of floats*: it multiplies a site's vector by
``num_examples / max_weight``, quantises ``[-clip, clip]`` onto ``[0, quantization_range)`` and
divides the sum by the number of sites. With ``num_examples == max_weight`` (ratio 1),
``quantization_range = 2 * clip`` (quantiser 1) and integer elements in ``[0, clip)`` every step
is exact; the coordinator multiplies the average by the number of summed sites and gets the
integer sum back (checked to be whole, in range and self-consistent,
:func:`node.multisite.vector.check_vector`).

What is added around SecAgg+ (and why it is not in Flower):

* the coordinator checks each masked vector's shape before it is summed and names the site
  whose vector is malformed (Flower would raise a shape error in numpy naming no one);
* each site hashes the masked vector it sends into its own signed audit ledger, and the
  coordinator records the hash of every masked vector it receives in its signed ledger, then
  sends each included site a copy of that ledger, so a site can prove its contribution was
  summed (``blindread multisite verify``);
* minimum participation (sites, positives, negatives) before anything is released.

The ServerApp reads the coordinator config named in the run config (``coordinator-config``) and
writes the round's outcome into ``round-dir``; the ClientApp reads the site folder named in the
SuperNode's node config (``site-dir``), prepared by ``blindread multisite join``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import flwr.compat.common.recorddict_compat as compat
import numpy as np
from cryptography.hazmat.primitives import serialization
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import (
    Code,
    FitIns,
    FitRes,
    Parameters,
    Status,
    bytes_to_ndarray,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid, ServerApp

from node.multisite.errors import RoundRefusedError, VectorError
from node.multisite.vector import ELEMENT_MAX, LAYOUT, LENGTH, vector_sha256

__all__ = ["CLIP", "MAX_WEIGHT", "QUANTIZATION", "client_app", "server_app"]

log = logging.getLogger(__name__)

CLIP = float(ELEMENT_MAX + 1)
QUANTIZATION = 2 * (ELEMENT_MAX + 1)
MODULUS = 1 << 32
MAX_WEIGHT = 1000.0
LEDGER_QUERY = "blindread-ledger"


# --- the site ----------------------------------------------------------------------------------



def _site_dir(context: Context) -> Path:
    return Path(str(context.node_config["site-dir"]))


def _status(site_dir: Path, text: str) -> None:
    """One PHI-free status line the join command shows as progress."""
    from durable_io import atomic_write

    body = json.dumps({"time": time.time(), "status": text}).encode()
    atomic_write(site_dir / "status.json", body, mode=0o600)


def _contribution(site_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((site_dir / "contribution.json").read_text())
    return data


def _site_ledger(info: dict[str, Any]) -> Any:
    from node.audit import open_ledger
    from node.config import load_config

    return open_ledger(load_config(info["node_config"]))


def _audit_mod(msg: Message, context: Context, call_next: Any) -> Message:
    """Around secaggplus_mod: progress, and the hash of the masked vector into the site ledger."""
    if msg.metadata.message_type != MessageType.TRAIN:
        return cast(Message, call_next(msg, context))
    site_dir = _site_dir(context)
    stage = str(msg.content.config_records[RECORD_KEY_CONFIGS].get(Key.STAGE, "?"))
    _status(site_dir, f"secure aggregation: {stage}")
    reply = cast(Message, call_next(msg, context))
    if stage == Stage.COLLECT_MASKED_VECTORS and not reply.has_error():
        masked = cast(list[bytes], reply.content.config_records[RECORD_KEY_CONFIGS][
            Key.MASKED_PARAMETERS])  # fmt: skip
        info = _contribution(site_dir)
        digest = vector_sha256(masked)
        entry = {"run": str(msg.metadata.run_id), "round": msg.metadata.group_id,
                 "site": info["site"], "node_id": str(msg.metadata.dst_node_id),
                 "model": info["model"], "model_version": info["model_version"],
                 "layout": info["layout"], "masked_vector_sha256": digest}  # fmt: skip
        ledger = _site_ledger(info)
        if ledger is not None:
            ledger.append("multisite_contributed", entry)
        from durable_io import atomic_write

        atomic_write(site_dir / "contributed.json", json.dumps(entry).encode(), mode=0o600)
    _count_sent(site_dir, stage, reply)
    _status(site_dir, f"secure aggregation: {stage} sent")
    return reply


def _payload_bytes(value: Any) -> int:
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, list):
        return sum(_payload_bytes(v) for v in value)
    return 8


def _count_sent(site_dir: Path, stage: str, reply: Message) -> None:
    """Payload bytes this site sent per stage (record contents; not HTTP/TLS framing), for
    benchmarks/multisite.py."""
    from durable_io import atomic_write

    n = 0
    for record in reply.content.config_records.values():
        n += sum(_payload_bytes(k) + _payload_bytes(v) for k, v in record.items())
    path = site_dir / "sent_bytes.json"
    try:
        sent: dict[str, int] = json.loads(path.read_text())
    except (OSError, ValueError):
        sent = {}
    sent[stage] = sent.get(stage, 0) + n
    atomic_write(path, json.dumps(sent).encode(), mode=0o600)


client_app = ClientApp(mods=[_audit_mod, secaggplus_mod])  # outermost first


@client_app.train()
def _train(msg: Message, context: Context) -> Message:
    """Hand SecAgg+ this site's vector (prepared by ``join``); the mod masks it."""
    site_dir = _site_dir(context)
    info = _contribution(site_dir)
    vector = np.load(site_dir / "vector.npy", allow_pickle=False)
    a = np.asarray(vector)
    in_range = a.size > 0 and a.min() >= 0 and a.max() <= ELEMENT_MAX
    if a.dtype.kind not in "iu" or a.ndim != 1 or not in_range:
        raise VectorError("the prepared vector is not a vector of integers in range")
    metrics: dict[str, Any] = {"site": info["site"], "model": info["model"],
                               "model_version": info["model_version"], "layout": info["layout"]}
    if info.get("published"):
        metrics["published"] = json.dumps(info["published"])
    res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([a.astype(np.float64)]),
                 int(MAX_WEIGHT), metrics)  # fmt: skip
    return Message(compat.fitres_to_recorddict(res, False), reply_to=msg)


@client_app.query()
def _query(msg: Message, context: Context) -> Message:
    """The coordinator's ledger after the round: keep a copy, record the round as done."""
    from durable_io import atomic_write

    site_dir = _site_dir(context)
    cfg = msg.content.config_records[LEDGER_QUERY]
    run = str(cfg["run"])
    ledger_bytes = cast(bytes, cfg["ledger"])
    atomic_write(site_dir / "coordinator-ledger.jsonl", ledger_bytes, mode=0o644)
    atomic_write(site_dir / "coordinator-ledger.jsonl.pub", cast(bytes, cfg["public_key"]),
                 mode=0o644)
    atomic_write(site_dir / "coordinator-ledger.jsonl.head", cast(bytes, cfg["head"]), mode=0o644)
    outcome = {"run": run, "released": bool(cfg["released"]), "reason": str(cfg["reason"])}
    atomic_write(site_dir / "outcome.json", json.dumps(outcome).encode(), mode=0o600)
    info = _contribution(site_dir)
    ledger = _site_ledger(info)
    if ledger is not None:
        ledger.append("multisite_round_completed", {
            "run": run, "site": info["site"], "released": outcome["released"],
            "coordinator_ledger_sha256": __import__("hashlib").sha256(ledger_bytes).hexdigest(),
        })  # fmt: skip
    _status(site_dir, "done: " + ("result released" if outcome["released"]
                                  else f"refused: {outcome['reason']}"))  # fmt: skip
    return Message(RecordDict({LEDGER_QUERY: ConfigRecord({"ok": True})}), reply_to=msg)




# --- the coordinator ---------------------------------------------------------------------------

server_app = ServerApp()


class _Collect(Strategy):
    """The legacy Strategy SecAgg+ drives: selects the sites, keeps the unmasked average."""

    def __init__(self, grid: Grid, node_ids: list[int]) -> None:
        self.grid = grid
        self.node_ids = node_ids
        self.average: list[np.ndarray] | None = None
        self.results: list[tuple[ClientProxy, FitRes]] = []
        self.failures: list[Any] = []

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return None

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        run_id = self.grid.run.run_id
        return [(GridClientProxy(n, self.grid, run_id), FitIns(parameters, {}))
                for n in self.node_ids]  # fmt: skip

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[Any]) -> tuple[Parameters | None, dict[str, Any]]:
        self.results, self.failures = results, failures
        if results:
            self.average = parameters_to_ndarrays(results[0][1].parameters)
        return None, {}

    def configure_evaluate(self, server_round: int, parameters: Parameters,
                           client_manager: ClientManager) -> list[Any]:
        return []

    def aggregate_evaluate(self, server_round: int, results: list[Any],
                           failures: list[Any]) -> tuple[float | None, dict[str, Any]]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> None:
        return None


class _CheckingGrid:
    """The grid as SecAgg+ sees it in the masked-vector stage: every reply is checked (shape
    of the masked vector) and hashed before SecAgg+ sums it; a malformed one stops the round
    naming its site."""

    def __init__(self, grid: Grid, names: dict[int, str], received: dict[int, str],
                 keep: Path | None, answered: set[int] | None = None,
                 check: bool = True) -> None:
        self._grid, self._names, self._received, self._keep = grid, names, received, keep
        self._answered = answered if answered is not None else set()
        self._check = check

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None
                         ) -> Iterable[Message]:  # fmt: skip
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        self._answered.update(m.metadata.src_node_id for m in replies if not m.has_error())
        for msg in replies:
            if msg.has_error() or not self._check:
                continue
            nid = msg.metadata.src_node_id
            site = self._names.get(nid, f"node {nid}")
            try:
                raw = cast(list[bytes], msg.content.config_records[RECORD_KEY_CONFIGS][
                    Key.MASKED_PARAMETERS])  # fmt: skip
                arrays = [bytes_to_ndarray(b) for b in raw]
            except Exception as exc:
                raise RoundRefusedError(f"site {site}: unreadable masked vector "
                                   f"({type(exc).__name__})") from None  # fmt: skip
            shapes = [tuple(a.shape) for a in arrays]
            if shapes != [(1,), (LENGTH,)]:
                got = shapes[1] if len(shapes) == 2 else shapes
                raise RoundRefusedError(
                    f"site {site}: masked vector of shape {got}, layout {LAYOUT} needs "
                    f"({LENGTH},); its contribution is refused")
            self._received[nid] = vector_sha256(raw)
            if self._keep is not None:
                np.save(self._keep / f"masked-{site}.npy", arrays[1], allow_pickle=False)
        return replies


class _CheckedSecAggPlus(SecAggPlusWorkflow):
    def __init__(self, names: dict[int, str], received: dict[int, str], keep: Path | None,
                 **kw: Any) -> None:
        super().__init__(**kw)
        self._names, self._received, self._keep = names, received, keep
        self.answered: dict[str, set[int]] = {}

    def _grid(self, grid: Grid, stage: str, check: bool = False) -> Grid:
        seen = self.answered.setdefault(stage, set())
        return cast(Grid, _CheckingGrid(grid, self._names, self._received, self._keep, seen,
                                        check))  # fmt: skip

    def setup_stage(self, grid: Grid, context: LegacyContext, state: Any) -> bool:
        return bool(super().setup_stage(self._grid(grid, Stage.SETUP), context, state))

    def share_keys_stage(self, grid: Grid, context: LegacyContext, state: Any) -> bool:
        return bool(super().share_keys_stage(self._grid(grid, Stage.SHARE_KEYS), context, state))

    def collect_masked_vectors_stage(self, grid: Grid, context: LegacyContext,
                                     state: Any) -> bool:  # fmt: skip
        checking = self._grid(grid, Stage.COLLECT_MASKED_VECTORS, check=True)
        return bool(super().collect_masked_vectors_stage(checking, context, state))

    def unmask_stage(self, grid: Grid, context: LegacyContext, state: Any) -> bool:
        return bool(super().unmask_stage(self._grid(grid, Stage.UNMASK), context, state))

    def silent(self, names: dict[int, str]) -> str:
        """Which sites did not answer which stage (for a halted round's message)."""
        parts = []
        for stage in (Stage.SETUP, Stage.SHARE_KEYS, Stage.COLLECT_MASKED_VECTORS, Stage.UNMASK):
            if stage not in self.answered:
                break
            quiet = sorted(names[n] for n in names if n not in self.answered[stage])
            if quiet:
                parts.append(f"{stage}: no answer from {', '.join(quiet)}")
        return "; ".join(parts) or "every site answered"


def _key_der(pem_or_ssh: bytes) -> bytes:
    """A public key in a comparable form (DER SubjectPublicKeyInfo)."""
    try:
        key = serialization.load_pem_public_key(pem_or_ssh)
    except ValueError:
        key = serialization.load_ssh_public_key(pem_or_ssh)
    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)  # fmt: skip


def _say(text: str) -> None:
    """Progress for ``flwr run --stream`` (the coordinator CLI shows these lines)."""
    print(f"[blindread] {text}", flush=True)


@server_app.main()
def _main(grid: Grid, context: Context) -> None:
    from node.multisite.config import load_coordinator_config
    from node.multisite.coordinator import finish_round

    cfg = load_coordinator_config(str(context.run_config["coordinator-config"]))
    round_dir = Path(str(context.run_config["round-dir"]))
    by_key = {_key_der(entry.public_key.read_bytes()): name for name, entry in cfg.sites.items()}
    deadline = time.monotonic() + cfg.aggregation.wait_for_sites_seconds
    names: dict[int, str] = {}
    shown = -1
    while True:
        names = {}
        for info in grid.get_nodes():
            name = by_key.get(_key_der(bytes(info.public_key))) if info.public_key else None
            if name is not None:
                names[int(info.node_id)] = name
        online = set(grid.get_node_ids())
        names = {n: s for n, s in names.items() if n in online}
        if len(names) != shown:
            shown = len(names)
            _say(f"sites connected: {len(names)}/{len(cfg.sites)} "
                 f"({', '.join(sorted(names.values())) or 'none'})")  # fmt: skip
        if len(names) == len(cfg.sites) or time.monotonic() >= deadline:
            break
        time.sleep(1.0)
    missing = sorted(set(cfg.sites) - set(names.values()))
    received: dict[int, str] = {}
    outcome: dict[str, Any] = {"run": str(context.run_id), "sites_started": sorted(names.values()),
                               "missing": missing}  # fmt: skip
    average: list[np.ndarray] | None = None
    included: dict[int, str] = {}
    metrics: dict[str, dict[str, Any]] = {}
    try:
        if len(names) < cfg.minimum.sites:
            raise RoundRefusedError(
                f"{len(names)} site(s) connected, the minimum is {cfg.minimum.sites}; "
                f"missing: {', '.join(missing)}"
            )
        n = len(names)
        threshold = cfg.aggregation.reconstruction_threshold or max(2, n // 2 + 1)
        workflow = _CheckedSecAggPlus(
            names, received,
            round_dir if cfg.aggregation.record_masked_vectors else None,
            num_shares=n, reconstruction_threshold=min(threshold, n - 1),
            max_weight=MAX_WEIGHT, clipping_range=CLIP, quantization_range=QUANTIZATION,
            modulus_range=MODULUS, timeout=cfg.aggregation.stage_timeout_seconds,
        )  # fmt: skip
        strategy = _Collect(grid, sorted(names))
        legacy = LegacyContext(context, strategy=strategy)
        legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
            {WorkflowKey.CURRENT_ROUND: 1})
        legacy.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
            ndarrays_to_parameters([]), True)
        _say(f"secure aggregation (SecAgg+) over {n} sites, {threshold} shares to unmask")
        workflow(grid, legacy)
        included = {
            cast(GridClientProxy, proxy).node_id: names[cast(GridClientProxy, proxy).node_id]
            for proxy, _ in strategy.results
        }
        for proxy, res in strategy.results:
            metrics[names[cast(GridClientProxy, proxy).node_id]] = dict(res.metrics)
        dropped = sorted(set(names.values()) - set(included.values()))
        outcome["dropped"] = dropped
        if strategy.average is None:
            raise RoundRefusedError(
                "secure aggregation halted: too few sites answered to unmask the sum ("
                + workflow.silent(names) + ")"
            )
        average = strategy.average
    except RoundRefusedError as exc:
        outcome.setdefault("dropped", [])
        finish_round(cfg, round_dir, outcome, None, {}, received, names, str(exc), grid)
        return
    finish_round(cfg, round_dir, outcome, average[0], included, received, names, None, grid,
                 metrics=metrics)
