"""The ``multisite:`` section of a hospital node's config: how this site joins a multi-site
validation (docs/multisite.md). The coordinator's own config is :mod:`node.multisite.config`."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from node.config.base import FrozenModel

__all__ = ["MultisiteSiteSection"]


class MultisiteSiteSection(FrozenModel):
    """This hospital as one site of a federation run by a coordinator."""

    site: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                      description="this site's name, as the coordinator registered its key")
    superlink: str = Field(pattern=r"^[^\s:/]+:[0-9]{1,5}$",
                           description="the coordinator's Flower SuperLink, host:port")
    ca: Path = Field(description="CA certificate that signed the SuperLink's TLS certificate")
    auth_key: Path = Field(description="this site's EC private key (OpenSSH format, 0600) "
                           "for Flower node authentication; `blindread multisite keygen`")
    coordinator_public_key: Path | None = Field(
        default=None, description="the coordinator ledger's Ed25519 public key (PEM), to "
        "verify its ledger; default: trust on first use of the copy the coordinator sends")
    publish_own_figures: bool = Field(
        default=False, description="also send this site's own headline figures, in clear, to "
        "the coordinator's report (default: nothing of this site alone leaves it)")
    state_dir: Path | None = Field(default=None, description="default: <node.state_dir>/multisite")
