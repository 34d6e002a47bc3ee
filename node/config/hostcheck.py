"""What ``blindread config check`` verifies on this machine beyond the file's own validity.

A config can be valid YAML with valid values and still not run here: a vendor client
certificate that does not exist, a ``node.state_dir`` under ``/proc`` that can never be made.
The node finds these only at start-up or at its first job; ``config check`` reports them up
front, one ``yaml.path: problem`` line each. Nothing is created or changed: a directory that
does not exist yet is judged by its nearest existing parent (can a directory be made there?),
probed with a temporary directory that is removed at once.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from node.config.model import NodeConfig
from node.config.scp import TlsSection

__all__ = ["host_problems"]


def host_problems(cfg: NodeConfig) -> list[str]:
    """Every file the config names that cannot be read, every directory that cannot be made."""
    problems = [f"{where}: {p}" for where, path in _files(cfg) if (p := _file_problem(path))]
    for where, path in _dirs(cfg):
        problem = _dir_problem(path)
        if problem:
            problems.append(f"{where}: {problem}")
    return problems


def _tls_files(where: str, tls: TlsSection | None) -> Iterator[tuple[str, Path]]:
    if tls is None:
        return
    yield f"{where}.cert", tls.cert
    yield f"{where}.key", tls.key
    if tls.ca is not None:
        yield f"{where}.ca", tls.ca


def _files(cfg: NodeConfig) -> Iterator[tuple[str, Path]]:
    yield from _tls_files("scp.tls", cfg.scp.tls)
    for name, dest in cfg.destinations.items():
        yield from _tls_files(f"destinations.{name}.tls", dest.tls)
    for name, vendor in cfg.vendors.items():
        yield f"vendors.{name}.client_cert", vendor.client_cert
        yield f"vendors.{name}.client_key", vendor.client_key
        yield f"vendors.{name}.ca", vendor.ca
    for i, receiver in enumerate(cfg.audit.atna.destinations):
        for key, path in (("ca", receiver.ca), ("cert", receiver.cert), ("key", receiver.key)):
            if path is not None:
                yield f"audit.atna.destinations[{i}].{key}", path


def _dirs(cfg: NodeConfig) -> Iterator[tuple[str, Path]]:
    yield "node.state_dir", cfg.node.state_dir
    if cfg.node.key_dir is not None:
        yield "node.key_dir", cfg.node.key_dir
    if cfg.scp.spool_dir is not None:
        yield "scp.spool_dir", cfg.scp.spool_dir
    if cfg.audit.ledger is not None:
        yield "audit.ledger", cfg.audit.ledger.parent
    if cfg.audit.anchor_dir is not None:
        yield "audit.anchor_dir", cfg.audit.anchor_dir


def _file_problem(path: Path) -> str | None:
    try:
        if not path.is_file():
            return f"{path}: no such file" if not path.exists() else f"{path}: not a file"
        with path.open("rb"):
            return None
    except OSError as exc:
        return f"{path}: cannot be read ({exc.strerror})"


def _dir_problem(path: Path) -> str | None:
    p = path.absolute()
    if p.exists():
        if not p.is_dir():
            return f"{path} exists and is not a directory"
        if not os.access(p, os.W_OK | os.X_OK):
            return f"{path} is not writable by this user"
        return _probe(p, path)
    parent = p.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"{path} cannot be created: {parent} is not a directory"
    return _probe(parent, path)


def _probe(where: Path, path: Path) -> str | None:
    """Make and remove a temporary directory in ``where``: the only test /proc, read-only
    mounts and the like answer truthfully (``os.access`` says yes to root everywhere)."""
    try:
        probe = tempfile.mkdtemp(prefix=".blindread-check-", dir=where)
    except OSError as exc:
        what = "cannot be created" if where != path.absolute() else "is not writable"
        return f"{path} {what}: a directory cannot be made in {where} ({exc.strerror})"
    os.rmdir(probe)
    return None
