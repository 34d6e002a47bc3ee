"""The coordinator's release rules on a decoded sum (no federation: finish_round is what the
ServerApp calls after SecAgg+; tests/integration/test_multisite.py runs it for real)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from node.audit import load_public_key, verify_ledger
from node.multisite import LAYOUT, encode
from node.multisite.config import load_coordinator_config
from node.multisite.coordinator import finish_round


@pytest.fixture(autouse=True)
def sent(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Messages need a Flower run context: record what would be sent instead."""
    calls: list[Any] = []
    monkeypatch.setattr("node.multisite.coordinator._send_ledger",
                        lambda cfg, grid, targets, *rest: calls.append(sorted(targets)))
    return calls


def _cfg(tmp_path: Path, **minimum: int) -> Any:
    data = {
        "coordinator": {"state_dir": str(tmp_path / "c"),
                        "tls": {"cert": "c.crt", "key": "c.key", "ca": "ca.crt"}},
        "model": {"name": "m", "version": "1"}, "threshold": 0.5,
        "sites": {n: {"public_key": f"{n}.pub"} for n in "abc"},
        "minimum": {"sites": 3, "positives": 1, "negatives": 1, **minimum},
        "report": {"bootstrap": 20},
    }  # fmt: skip
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    return load_coordinator_config(tmp_path / "c.yaml")


def _round(tmp_path: Path, cfg: Any, metrics_model: str = "m") -> dict[str, Any]:
    rng = np.random.default_rng(0)
    vecs = []
    for _ in range(3):
        y = np.array([1, 0, 1, 0, 0])
        vecs.append(encode(rng.random(5) * 0.5 + 0.4 * y, y, 0.5))
    total = sum(vecs)
    names = {11: "a", 12: "b", 13: "c"}
    metrics = {n: {"model": metrics_model, "model_version": "1", "layout": LAYOUT}
               for n in names.values()}  # fmt: skip
    rd = tmp_path / "round"
    rd.mkdir(exist_ok=True)
    finish_round(cfg, rd, {"run": "7", "dropped": [], "missing": []}, total / 3, names,
                 {k: f"{k:064x}" for k in names}, names, None, None, metrics=metrics)
    out: dict[str, Any] = json.loads((rd / "outcome.json").read_text())
    return out


def test_released_round_writes_report_and_signed_ledger(tmp_path: Path, sent: list[Any]) -> None:
    cfg = _cfg(tmp_path)
    out = _round(tmp_path, cfg)
    assert sent == [[11, 12, 13]]  # every site of the round gets the ledger copy
    assert out["released"] and (tmp_path / "round" / "report" / "report.json").exists()
    report = json.loads((tmp_path / "round" / "report" / "report.json").read_text())
    assert report["cases"] == {"n": 15, "positive": 6, "negative": 9}
    assert verify_ledger(cfg.ledger, load_public_key(str(cfg.ledger) + ".pub")).ok


@pytest.mark.parametrize(("minimum", "model", "reason"), [
    ({"positives": 7}, "m", "the pool has 6 positive and 9 negative cases; the minimum is 7"),
    ({"negatives": 10}, "m", "minimum is 1 and 10"),
    ({}, "other", "site a: contributed for model other 1"),
])  # fmt: skip
def test_refused_round_reports_nothing(
    tmp_path: Path, minimum: dict[str, int], model: str, reason: str
) -> None:
    cfg = _cfg(tmp_path, **minimum)
    out = _round(tmp_path, cfg, metrics_model=model)
    assert not out["released"] and reason in out["reason"]
    assert not (tmp_path / "round" / "report").exists()
    last = json.loads(cfg.ledger.read_text().splitlines()[-1])
    assert last["kind"] == "multisite_round" and not last["details"]["released"]
