"""Config sections for DICOM networking: our Storage SCP, study completion, destinations, sender."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

from node.config.base import AETitle, FrozenModel, Port

__all__ = [
    "CompletionSection",
    "DestinationSection",
    "ScpSection",
    "SenderSection",
    "TlsSection",
]


def _network(value: Any) -> Any:
    """A CIDR string parsed once, strictly, with :func:`ipaddress.ip_network`'s own message.

    Left to pydantic, a bad value is tried as IPv4 and as IPv6 and reported twice, and
    ``10.20.0.1/16`` only "is not a valid network": here it is one line saying its host bits
    are set (the admin meant ``10.20.0.0/16``, or ``10.20.0.1/32`` for one address).
    """
    if not isinstance(value, str):
        return value
    try:
        return ip_network(value.strip(), strict=True)
    except ValueError as exc:
        text = str(exc)
        if "host bits set" in text:
            net = ip_network(value.strip(), strict=False)
            raise ValueError(
                f"{value!r} has host bits set: write the network {net} (or /{net.max_prefixlen}"
                " for one address)"
            ) from None
        raise ValueError(
            f"{value!r} is not an IPv4 or IPv6 network in CIDR notation (e.g. 10.20.0.0/16)"
        ) from None


Network = Annotated[IPv4Network | IPv6Network, BeforeValidator(_network)]
"""An IPv4 or IPv6 network, given as CIDR text (host bits must be zero)."""


class TlsSection(FrozenModel):
    """TLS for a DICOM association (PS3.15 Annex B secure transport)."""

    cert: Path
    key: Path
    ca: Path | None = Field(
        default=None, description="CA bundle used to verify the peer; required to verify peers"
    )
    require_client_cert: bool = True


class ScpSection(FrozenModel):
    """Our Storage SCP: who may connect and where accepted instances are spooled."""

    ae_title: AETitle = "BLINDREAD"
    host: str = "127.0.0.1"
    port: Port = 11112
    allowed_calling_ae_titles: tuple[AETitle, ...] = Field(
        default=(), description="empty = any calling AE title"
    )
    allowed_networks: tuple[Network, ...] = Field(
        default=(IPv4Network("127.0.0.0/8"), IPv6Network("::1/128"))
    )
    spool_dir: Path | None = Field(default=None, description="default: <node.state_dir>/spool")
    min_free_bytes: int = Field(default=1_000_000_000, ge=0)
    fsync: bool = True
    max_pdu: int = Field(default=0, ge=0, description="0 = unlimited")
    fast_path: bool = Field(
        default=True, description="C-STORE data read by scp._fastpath (false: pynetdicom's path)"
    )
    acse_timeout: float = Field(
        default=10.0,
        gt=0,
        description="seconds a connection has from accept to a complete A-ASSOCIATE-RQ "
        "(TLS handshake included) before it is dropped",
    )
    max_associations_per_address: int = Field(
        default=8,
        ge=1,
        description="connections one source address may hold at once; one more is closed "
        "at accept",
    )
    dimse_timeout: float = Field(default=60.0, gt=0)
    network_timeout: float = Field(default=60.0, gt=0)
    tls: TlsSection | None = None


class CompletionSection(FrozenModel):
    """When a study counts as complete (stable-age rule, as in Orthanc and mercure)."""

    quiet_seconds: float = Field(default=60.0, gt=0)
    max_age_seconds: float = Field(default=3600.0, gt=0)
    poll_seconds: float = Field(default=1.0, gt=0, description="how often timers are checked")


class DestinationSection(FrozenModel):
    """A DICOM peer we send to (PACS, research archive)."""

    ae_title: AETitle
    host: str
    port: Port
    calling_ae_title: AETitle | None = Field(default=None, description="default: scp.ae_title")
    tls: TlsSection | None = None


class SenderSection(FrozenModel):
    """Retry policy of the Storage SCU (the job runner's: one job attempt is one send).

    Defaults (those of ``scp.SenderSettings``): 10 tries, waits 10 s doubling to 120 s with
    50 % jitter, 6.2-12.5 min of backoff before a job is quarantined.
    """

    max_attempts: int = Field(default=10, ge=1)
    initial_backoff_seconds: float = Field(default=10.0, gt=0)
    max_backoff_seconds: float = Field(default=120.0, gt=0)
    timeout_seconds: float = Field(default=30.0, gt=0)
    jitter: float = Field(default=0.5, ge=0, le=1, description="random fraction of each wait")
