"""Plain settings for the ``scp`` package.

``scp`` never imports the node's pydantic config: the node converts its config into these frozen
dataclasses, so this package stays usable (and testable) on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

__all__ = [
    "CompletionSettings",
    "DestinationSettings",
    "LogId",
    "ScpSettings",
    "SenderSettings",
    "TlsSettings",
]

LogId = Callable[[str], str]
"""Maps a UID to a keyed pseudonym; the only way UIDs appear in logs and file names."""


@dataclass(frozen=True)
class TlsSettings:
    """Certificate, key and CA bundle for DICOM TLS (PS3.15 Annex B)."""

    cert: Path
    key: Path
    ca: Path | None = None
    require_client_cert: bool = True


@dataclass(frozen=True)
class ScpSettings:
    """Our Storage SCP: identity, who may connect, spool location and limits."""

    spool_dir: Path
    ae_title: str = "BLINDREAD"
    host: str = "127.0.0.1"
    port: int = 11112
    allowed_calling_ae_titles: tuple[str, ...] = ()
    allowed_networks: tuple[IPv4Network | IPv6Network, ...] = field(
        default=(IPv4Network("127.0.0.0/8"), IPv6Network("::1/128"))
    )
    min_free_bytes: int = 0
    fsync: bool = True
    max_pdu: int = 0
    fast_path: bool = True
    acse_timeout: float = 10.0
    max_associations_per_address: int = 8
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0
    tls: TlsSettings | None = None


@dataclass(frozen=True)
class CompletionSettings:
    """Stable-age rule: complete after ``quiet_seconds`` without news or ``max_age_seconds``."""

    quiet_seconds: float = 60.0
    max_age_seconds: float = 3600.0
    poll_seconds: float = 0.5


@dataclass(frozen=True)
class DestinationSettings:
    """A peer we send to."""

    ae_title: str
    host: str
    port: int
    calling_ae_title: str = "BLINDREAD"
    tls: TlsSettings | None = None


@dataclass(frozen=True)
class SenderSettings:
    """Retry policy of the Storage SCU."""

    max_attempts: int = 5
    initial_backoff_seconds: float = 2.0
    max_backoff_seconds: float = 300.0
    timeout_seconds: float = 30.0

    def backoff(self, attempts: int) -> float:
        """Delay before the next try after ``attempts`` failed tries (1, 2, ...)."""
        delay = self.initial_backoff_seconds * (2 ** max(0, attempts - 1))
        return float(min(delay, self.max_backoff_seconds))
