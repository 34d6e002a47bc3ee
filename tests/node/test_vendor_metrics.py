"""Vendor failures show in the node's metrics (#16.9): every retry the vendor client makes and
every failed vendor step count in ``blindread_retries_total{step="vendor"}``."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.metrics import NodeMetrics
from node.vendors import VendorBackends
from secure_infer import VendorUnavailableError
from secure_infer.vendor import certs
from tests.support.nodeutil import node_config
from tests.support.peers import free_port


def _vendor_retries(metrics: NodeMetrics) -> float:
    value = metrics.registry.get_sample_value("blindread_retries_total", {"step": "vendor"})
    return float(value or 0.0)


def test_vendor_client_retries_move_the_vendor_retry_metric(tmp_path: Path) -> None:
    certs.create_ca(tmp_path / "ca")
    pair = certs.issue_client_cert(tmp_path / "ca", tmp_path / "tls", "hospital-a")
    cfg = node_config(
        tmp_path,
        vendors={
            "acme": {
                "url": f"https://127.0.0.1:{free_port()}",  # nobody listens
                "client_cert": str(pair.cert),
                "client_key": str(pair.key),
                "ca": str(tmp_path / "ca" / "ca.crt"),
                "max_attempts": 3,
                "initial_backoff_seconds": 0.05,
                "max_backoff_seconds": 0.1,
                "models": ["m"],
            }
        },
    )
    metrics = NodeMetrics()
    backends = VendorBackends(cfg, tmp_path / "keys", metrics=metrics)
    try:
        with pytest.raises(VendorUnavailableError):
            backends("acme").manifest("m")
    finally:
        backends.close()
    assert _vendor_retries(metrics) == 2  # 3 attempts = 2 retries, each counted
