"""Helpers to run a real BlindRead node (in-process) on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from node.app import build_service, node_paths
from node.config import NodeConfig, parse_model
from node.keys import load_or_create_secret
from node.netsettings import destination_settings, sender_settings
from node.runner import JobAction
from node.service import NodeService
from scp import DestinationSettings, StorageSender
from tests.support.peers import free_port
from tests.support.result_action import SendResultAction


def node_config(tmp_path: Path, **sections: dict[str, Any]) -> NodeConfig:
    """A node config in ``tmp_path`` on a free port; ``sections`` override/extend keys."""
    data: dict[str, Any] = {
        "node": {"state_dir": str(tmp_path / "state")},
        "scp": {"port": free_port(), "min_free_bytes": 0},
        "completion": {"quiet_seconds": 300, "poll_seconds": 0.1},
    }
    for name, values in sections.items():
        if isinstance(values, dict) and isinstance(data.get(name), dict):
            data[name] = {**data[name], **values}
        else:
            data[name] = values
    return parse_model(data, NodeConfig)


def send_result_action(cfg: NodeConfig) -> JobAction:
    """A simple job action for SCP/SCU tests: send a small result object (Basic Text SR) to
    the ``results`` destination (or the first one configured)."""
    dest: DestinationSettings | None = None
    if cfg.destinations:
        name = "results" if "results" in cfg.destinations else next(iter(cfg.destinations))
        dest = destination_settings(cfg, name)
    key = load_or_create_secret(node_paths(cfg).pseudonym_key)
    return SendResultAction(StorageSender(sender_settings(cfg)), dest, key, cfg.sr.series_number)


@contextmanager
def running_node(cfg: NodeConfig, action: JobAction | None = None) -> Iterator[NodeService]:
    svc = build_service(cfg, action if action is not None else send_result_action(cfg))
    svc.start()
    try:
        yield svc
    finally:
        svc.stop(timeout=5)
