"""The root of a hospital node's config file."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from node.config.base import FrozenModel
from node.config.deid import DeidSection
from node.config.inference import VendorPeerSection
from node.config.observability import AuditSection, MetricsSection
from node.config.routes import RouteSection
from node.config.scp import CompletionSection, DestinationSection, ScpSection, SenderSection
from node.config.sr import SrSection

__all__ = ["NodeConfig", "NodeSection"]


class NodeSection(FrozenModel):
    """Where the node keeps its state and keys."""

    name: str = "blindread"
    state_dir: Path = Path("/var/lib/blindread")
    key_dir: Path | None = Field(default=None, description="default: <state_dir>/keys")
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")

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

    @property
    def spool_dir(self) -> Path:
        return self.scp.spool_dir or self.node.state_dir / "spool"
