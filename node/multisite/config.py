"""The coordinator's config file (YAML, frozen, every problem named by its YAML path).

Example in ``config/multisite-coordinator.example.yaml``; loaded with node.config's
``load_model`` (secure_infer's yamlconfig helpers), like the node config.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from node.config import load_model
from node.config.base import FrozenModel, Port

__all__ = [
    "AggregationSection",
    "CoordinatorConfig",
    "CoordinatorSection",
    "MinimumSection",
    "ModelSection",
    "SiteEntry",
    "TlsFiles",
    "load_coordinator_config",
]

SITE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class TlsFiles(FrozenModel):
    cert: Path
    key: Path
    ca: Path


class CoordinatorSection(FrozenModel):
    state_dir: Path
    host: str = "127.0.0.1"
    port: Port = 9092
    tls: TlsFiles


class ModelSection(FrozenModel):
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)


class SiteEntry(FrozenModel):
    public_key: Path = Field(description="the site's EC public key (OpenSSH format)")


class MinimumSection(FrozenModel):
    """Below these the coordinator releases nothing (so no site is found by subtraction)."""

    sites: int = Field(default=3, ge=3)
    positives: int = Field(default=10, ge=1)
    negatives: int = Field(default=10, ge=1)


class AggregationSection(FrozenModel):
    wait_for_sites_seconds: float = Field(default=600.0, gt=0)
    stage_timeout_seconds: float = Field(default=300.0, gt=0)
    reconstruction_threshold: int | None = Field(
        default=None, ge=2, description="SecAgg+ shares needed to unmask; default: a majority "
        "of the sites that start the round")
    record_masked_vectors: bool = Field(
        default=False, description="keep every masked vector received (they reveal nothing "
        "alone; for audits and tests)")


class ReportSection(FrozenModel):
    bootstrap: int = Field(default=2000, ge=1)
    seed: int = 0


class CoordinatorConfig(FrozenModel):
    coordinator: CoordinatorSection
    model: ModelSection
    output: str | None = Field(default=None, description="model output (default: first)")
    threshold: float = Field(ge=0.0, le=1.0, description="the manifest threshold of OUTPUT")
    sites: dict[str, SiteEntry] = Field(min_length=1)
    minimum: MinimumSection = MinimumSection()
    aggregation: AggregationSection = AggregationSection()
    report: ReportSection = ReportSection()

    @model_validator(mode="after")
    def _check(self) -> CoordinatorConfig:
        import re

        bad = [n for n in self.sites if not re.match(SITE_NAME, n)]
        if bad:
            raise ValueError(f"sites: bad site name(s) {bad}; use letters, digits, . _ -")
        if len(self.sites) < self.minimum.sites:
            raise ValueError(
                f"sites: {len(self.sites)} site(s) configured but minimum.sites is "
                f"{self.minimum.sites}: no result could ever be released"
            )
        t = self.aggregation.reconstruction_threshold
        if t is not None and t >= len(self.sites):
            raise ValueError("aggregation.reconstruction_threshold must be below the number "
                             "of sites")
        return self

    @property
    def rounds_dir(self) -> Path:
        return self.coordinator.state_dir / "rounds"

    @property
    def ledger(self) -> Path:
        return self.coordinator.state_dir / "ledger" / "coordinator.jsonl"

    @property
    def ledger_key(self) -> Path:
        return self.coordinator.state_dir / "keys" / "coordinator_ed25519.key"


def load_coordinator_config(path: str | Path) -> CoordinatorConfig:
    """Load and validate; raises node.config.ConfigError listing every problem."""
    return load_model(path, CoordinatorConfig)
