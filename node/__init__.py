"""BlindRead hospital node: config, routing, jobs, de-identification, SR, audit and the CLI.

Public names are imported lazily (PEP 562) so the CLI starts fast and a command loads only what
it uses.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_WHERE = {
    "ConfigError": "node.config",
    "NodeConfig": "node.config",
    "load_config": "node.config",
    "Node": "node.app",
    "build_node": "node.app",
    "Pipeline": "node.pipeline",
    "evaluate_rules": "node.rules",
    "AuditLedger": "node.audit",
    "verify_ledger": "node.audit",
    "Deidentifier": "node.deid",
    "IdentifierVault": "node.vault",
    "build_result_sr": "node.sr",
    "read_result_sr": "node.sr",
    "NodeMetrics": "node.metrics",
    "Pseudonymizer": "node.pseudonym",
}
_RENAMED = {"evaluate_rules": "evaluate"}

__all__ = ["__version__", *sorted(_WHERE)]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'node' has no attribute {name!r}")
    return getattr(importlib.import_module(module), _RENAMED.get(name, name))
