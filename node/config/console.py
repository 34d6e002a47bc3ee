"""Config sections for the node's health checks and its web console / REST API."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from node.config.base import FrozenModel

__all__ = ["ConsoleSection", "ConsoleUser", "HealthSection"]


class HealthSection(FrozenModel):
    """What ``/healthz`` and the console call degraded (docs/console.md)."""

    cert_warning_days: float = Field(
        default=30.0, gt=0, description="a certificate expiring sooner is reported"
    )
    spool_near_factor: float = Field(
        default=1.5, ge=1.0,
        description="spool free space below scp.min_free_bytes x this is 'near the watermark'",
    )  # fmt: skip
    stuck_job_seconds: float = Field(
        default=1800.0, gt=0, description="a job running longer than this means a stuck runner"
    )
    probe_seconds: float = Field(
        default=30.0, gt=0,
        description="how often vendors (TLS) and destinations (C-ECHO) are probed",
    )


class ConsoleUser(FrozenModel):
    """A local console / API user. ``password_hash`` is ``scrypt$n$r$p$salt_hex$hash_hex``, made
    by ``python -m node.api.auth`` (never a clear password in the config)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")
    password_hash: str = Field(pattern=r"^scrypt\$\d+\$\d+\$\d+\$[0-9a-f]+\$[0-9a-f]+$")
    role: Literal["viewer", "operator"] = "viewer"


class ConsoleSection(FrozenModel):
    """The web console (``/console``) and REST API (``/api/v1``) on the metrics endpoint's
    server. Off unless ``enabled`` with at least one user."""

    enabled: bool = False
    users: tuple[ConsoleUser, ...] = ()
    session_hours: float = Field(default=8.0, gt=0, le=24 * 7)

    @field_validator("users")
    @classmethod
    def _unique(cls, v: tuple[ConsoleUser, ...]) -> tuple[ConsoleUser, ...]:
        names = [u.name for u in v]
        if len(set(names)) != len(names):
            raise ValueError("user names must be unique")
        return v
