"""The root of a hospital node's config file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, ModelWrapValidatorHandler, model_validator

from node.config.base import FrozenModel
from node.config.console import ConsoleSection, HealthSection
from node.config.deid import DeidSection
from node.config.inference import VendorPeerSection
from node.config.multisite import MultisiteSiteSection
from node.config.observability import AuditSection, MetricsSection
from node.config.routes import RouteReferences, RouteSection, reference_scope
from node.config.scp import CompletionSection, DestinationSection, ScpSection, SenderSection
from node.config.sr import SrSection

__all__ = ["NodeConfig", "NodeSection"]


class NodeSection(FrozenModel):
    """Where the node keeps its state and keys."""

    name: str = "blindread"
    state_dir: Path = Path("/var/lib/blindread")
    key_dir: Path | None = Field(default=None, description="default: <state_dir>/keys")
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    keep_finished_jobs_days: float = Field(
        default=7.0,
        gt=0,
        description="files of finished jobs are deleted this long after they finish (the job "
        "record stays); late images of a study within this window re-use them",
    )
    max_images_in_memory: int = Field(
        default=64,
        ge=1,
        description="images preprocessed, encrypted and sent to the vendor at a time: a job's "
        "memory is bounded by this, not by the study's size (each chunk is one audited request; "
        "a multiple of the model plan's images per ciphertext x max ciphertexts per request "
        "fills every request)",
    )

    workers: int = Field(
        default=2, ge=1, le=64,
        description="job worker threads: one slow job (a vendor taking minutes) does not hold"
        " up the others",
    )  # fmt: skip

    @property
    def keys(self) -> Path:
        return self.key_dir if self.key_dir is not None else self.state_dir / "keys"


class NodeConfig(FrozenModel):
    """A hospital node: everything ``blindread node run`` needs."""

    node: NodeSection = NodeSection()
    scp: ScpSection = ScpSection()
    completion: CompletionSection = CompletionSection()
    destinations: dict[str, DestinationSection] = {}
    sender: SenderSection = SenderSection()
    deid: DeidSection = DeidSection()
    vendors: dict[str, VendorPeerSection] = {}
    sr: SrSection = SrSection()
    routes: tuple[RouteSection, ...] = ()
    audit: AuditSection = AuditSection()
    metrics: MetricsSection = MetricsSection()
    multisite: MultisiteSiteSection | None = None  # issue 13: this node as a multi-site site
    health: HealthSection = HealthSection()
    console: ConsoleSection = ConsoleSection()

    @model_validator(mode="wrap")
    @classmethod
    def _check_references(
        cls, data: Any, handler: ModelWrapValidatorHandler[NodeConfig]
    ) -> NodeConfig:
        """Validate routes against the destinations, vendors and models declared here.

        The names are taken from the raw mapping and the routes are validated inside
        :func:`reference_scope`, so each bad reference is reported at its own YAML path
        (``routes[2].action.infer.model: unknown model ...``) together with every other problem.
        """
        with reference_scope(_references(data)):
            return handler(data)

    @model_validator(mode="after")
    def _console_served(self) -> NodeConfig:
        """The console needs users, the HTTP server it lives on, and TLS off loopback (its
        passwords and session cookies must not cross a network in clear)."""
        c, m = self.console, self.metrics
        if not c.enabled:
            return self
        if not c.users:
            raise ValueError("console.enabled needs at least one entry in console.users")
        if not m.enabled:
            raise ValueError("console.enabled needs metrics.enabled (the console and REST API"
                             " are served by the metrics endpoint's server)")  # fmt: skip
        if (m.tls_cert is None) != (m.tls_key is None):
            raise ValueError("metrics.tls_cert and metrics.tls_key go together")
        if m.tls_cert is None and m.host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError(f"console.enabled on metrics.host {m.host} needs metrics.tls_cert"
                             " and metrics.tls_key (HTTPS): passwords and session cookies must"
                             " not cross the network in clear")  # fmt: skip
        return self

    @property
    def spool_dir(self) -> Path:
        return self.scp.spool_dir or self.node.state_dir / "spool"

    @property
    def jobs_dir(self) -> Path:
        """Where a completed study's batch goes (renamed out of the spool)."""
        return self.node.state_dir / "jobs"

    def filesystem_problems(self) -> list[str]:
        """Problems of this config on this machine's file systems, one ``path: problem`` line
        each (``blindread config check`` and the node's start-up report them).

        A completed study is renamed from ``scp.spool_dir`` into ``<node.state_dir>/jobs``; a
        rename cannot cross file systems (EXDEV), so both must be on one. Directories that do
        not exist yet are judged by their nearest existing parent (where they will be made).
        """
        spool_at, spool_dev = _device(self.spool_dir)
        jobs_at, jobs_dev = _device(self.jobs_dir)
        if spool_dev == jobs_dev:
            return []
        where = "scp.spool_dir" if self.scp.spool_dir is not None else (
            "scp.spool_dir (default <node.state_dir>/spool)"
        )
        return [
            f"{where}: {self.spool_dir} is on another file system ({_dev(spool_dev, spool_at)})"
            f" than node.state_dir's jobs directory {self.jobs_dir} ({_dev(jobs_dev, jobs_at)});"
            " completed studies are moved from the spool into the jobs directory by rename,"
            " which cannot cross file systems: set scp.spool_dir to a directory on the file"
            " system of node.state_dir (or leave it out for <node.state_dir>/spool), and move"
            " any files already spooled into it while the node is stopped"
        ]

    @property
    def audit_ledger(self) -> Path:
        """The audit ledger file (its public key is published beside it as ``<ledger>.pub``)."""
        return self.audit.ledger or self.node.state_dir / "audit" / "ledger.jsonl"

    @property
    def audit_key_file(self) -> Path:
        """The node's Ed25519 audit signing key (raw 32 private bytes, mode 0600)."""
        return self.audit.key_file or self.node.keys / "audit_ed25519.key"

    @property
    def audit_anchor(self) -> Path:
        """The anchor of the audit ledger's signed head, outside the ledger's directory.

        Default ``<key_dir>/<ledger name>.anchor``: whoever can rewrite the key directory can
        take the signing key and forge the whole ledger anyway, so the anchor is as safe as
        the key; a custom directory must be writable by the node (systemd ReadWritePaths).
        """
        anchor_dir = self.audit.anchor_dir or self.node.keys
        return anchor_dir / (self.audit_ledger.name + ".anchor")


def _device(path: Path) -> tuple[Path, int]:
    """``st_dev`` of ``path``, or of its nearest existing parent; with the path it was read at."""
    p = path.absolute()
    while True:
        try:
            return p, os.stat(p).st_dev
        except (FileNotFoundError, NotADirectoryError):
            if p.parent == p:
                raise
            p = p.parent


def _dev(dev: int, at: Path) -> str:
    return f"device {os.major(dev)}:{os.minor(dev)}, read at {at}"


def _references(data: Any) -> RouteReferences:
    """Names declared in a raw config mapping; ``None`` where that section is itself malformed
    (its own error is reported, and references to it are not checked twice)."""
    if not isinstance(data, dict):
        return RouteReferences(seen_names=set())
    dests = data.get("destinations", {})
    destinations = frozenset(str(k) for k in dests) if isinstance(dests, dict) else None
    raw_vendors = data.get("vendors", {})
    vendors: dict[str, frozenset[str]] | None = None
    if isinstance(raw_vendors, dict):
        vendors = {}
        for name, peer in raw_vendors.items():
            models = peer.get("models", ()) if isinstance(peer, dict) else ()
            if not isinstance(models, list | tuple) or not all(isinstance(m, str) for m in models):
                vendors = None
                break
            vendors[str(name)] = frozenset(models)
    raw_deid = data.get("deid", {})
    profiles = raw_deid.get("profiles", {}) if isinstance(raw_deid, dict) else None
    deid_profiles = frozenset(str(k) for k in profiles) if isinstance(profiles, dict) else None
    return RouteReferences(destinations, vendors, deid_profiles, seen_names=set())
