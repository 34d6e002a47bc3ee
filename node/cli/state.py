"""The node's state as the admin commands find it: they never create it.

``jobs list``, ``jobs retry``, ``jobs purge``, ``vault purge`` and ``vault rotate-key`` work on
state a running node made. Opened as the node opens it, a wrong ``--config`` (or one run before
the node ever started) used to create ``/var/lib/blindread`` with fresh keys and an empty
``jobs.sqlite``: a second, empty node beside the real one, and the admin told "no jobs".
Here a missing state is a usage error naming what is missing and why.
"""

from __future__ import annotations

from pathlib import Path

from node.cli.errors import CommandUsageError
from node.config import NodeConfig

__all__ = ["require_jobs_db", "require_vault"]


def _require(cfg: NodeConfig, path: Path, what: str) -> None:
    if path.is_file():
        return
    state = cfg.node.state_dir
    where = (
        f"{state} does not exist" if not state.exists() else f"{path.name} is not in {state}"
    )
    raise CommandUsageError(
        f"no {what} at {path}: {where}; the node has not run with this config yet, or "
        "node.state_dir is not the running node's (nothing was created)"
    )


def require_jobs_db(cfg: NodeConfig) -> None:
    """Raise :class:`CommandUsageError` unless the node's job store exists."""
    _require(cfg, cfg.node.state_dir / "jobs.sqlite", "job store")


def require_vault(cfg: NodeConfig) -> None:
    """Raise :class:`CommandUsageError` unless the identifier vault and its key exist."""
    _require(cfg, cfg.node.state_dir / "vault.sqlite", "identifier vault")
    from node.vault import VAULT_KEY_FILE

    _require(cfg, cfg.node.keys / VAULT_KEY_FILE, "vault key")
