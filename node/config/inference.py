"""Config section for vendor peers and the models the hospital uses through them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from node.config.base import FrozenModel

if TYPE_CHECKING:
    from secure_infer import ClientSettings

__all__ = ["VendorPeerSection"]


class VendorPeerSection(FrozenModel):
    """A vendor's secure_infer server as seen from the hospital (HTTPS with mutual TLS)."""

    url: str = Field(description="https://host:port of the vendor server")
    client_cert: Path = Field(description="our client certificate, issued by the vendor's CA")
    client_key: Path = Field(description="its private key (mode 0600)")
    ca: Path = Field(description="the vendor's CA certificate; the only CA trusted (pinning)")
    connect_timeout_seconds: float = Field(default=10.0, gt=0)
    timeout_seconds: float = Field(default=300.0, gt=0, description="per request, read/write")
    max_attempts: int = Field(
        default=1, ge=1,
        description="tries of one request within a job attempt (on 503 and connection errors);"
        " the job's own retries (sender.*) are the node's one retry layer, so more than 1"
        " multiplies them",
    )  # fmt: skip
    max_concurrent_jobs: int = Field(
        default=1, ge=1, le=64, description="jobs using this vendor at the same time"
    )
    initial_backoff_seconds: float = Field(default=1.0, gt=0)
    max_backoff_seconds: float = Field(default=60.0, gt=0)
    models: tuple[str, ...] = Field(
        default=(),
        description="models routes may use at this peer: NAME (the vendor's current version,"
        " or any version a route pins) or NAME@VERSION (only that version)",
    )

    @field_validator("models")
    @classmethod
    def _model_refs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from secure_infer import parse_model_ref

        for item in v:
            parse_model_ref(item)
        return v

    @field_validator("url")
    @classmethod
    def _https(cls, v: str) -> str:
        if not v.startswith("https://"):
            raise ValueError("must start with https:// (the vendor link is always mutual TLS)")
        return v.rstrip("/")

    def client_settings(self) -> ClientSettings:
        """The :class:`secure_infer.ClientSettings` for this vendor."""
        from secure_infer import ClientSettings

        return ClientSettings(
            url=self.url,
            client_cert=self.client_cert,
            client_key=self.client_key,
            ca=self.ca,
            connect_timeout=self.connect_timeout_seconds,
            timeout=self.timeout_seconds,
            max_attempts=self.max_attempts,
            initial_backoff=self.initial_backoff_seconds,
            max_backoff=self.max_backoff_seconds,
        )
