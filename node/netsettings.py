"""Node config -> the ``scp`` package's plain settings (``scp`` never sees pydantic models)."""

from __future__ import annotations

from node.config import NodeConfig
from node.config.scp import TlsSection
from scp import (
    CompletionSettings,
    DestinationSettings,
    ScpSettings,
    SenderSettings,
    TlsSettings,
)

__all__ = [
    "completion_settings",
    "destination_settings",
    "scp_settings",
    "sender_settings",
    "tls_settings",
]


def tls_settings(tls: TlsSection | None) -> TlsSettings | None:
    if tls is None:
        return None
    return TlsSettings(tls.cert, tls.key, tls.ca, tls.require_client_cert)


def scp_settings(cfg: NodeConfig) -> ScpSettings:
    s = cfg.scp
    return ScpSettings(
        spool_dir=cfg.spool_dir,
        ae_title=s.ae_title,
        host=s.host,
        port=s.port,
        allowed_calling_ae_titles=s.allowed_calling_ae_titles,
        allowed_networks=s.allowed_networks,
        min_free_bytes=s.min_free_bytes,
        fsync=s.fsync,
        max_pdu=s.max_pdu,
        fast_path=s.fast_path,
        acse_timeout=s.acse_timeout,
        max_associations_per_address=s.max_associations_per_address,
        dimse_timeout=s.dimse_timeout,
        network_timeout=s.network_timeout,
        tls=tls_settings(s.tls),
    )


def completion_settings(cfg: NodeConfig) -> CompletionSettings:
    c = cfg.completion
    return CompletionSettings(c.quiet_seconds, c.max_age_seconds, c.poll_seconds)


def destination_settings(cfg: NodeConfig, name: str) -> DestinationSettings:
    """Settings of destination ``name``; ``KeyError`` names the known ones."""
    try:
        d = cfg.destinations[name]
    except KeyError:
        known = ", ".join(sorted(cfg.destinations)) or "(none)"
        raise KeyError(f"unknown destination '{name}'; known: {known}") from None
    return DestinationSettings(
        ae_title=d.ae_title,
        host=d.host,
        port=d.port,
        calling_ae_title=d.calling_ae_title or cfg.scp.ae_title,
        tls=tls_settings(d.tls),
    )


def sender_settings(cfg: NodeConfig) -> SenderSettings:
    s = cfg.sender
    return SenderSettings(
        s.max_attempts,
        s.initial_backoff_seconds,
        s.max_backoff_seconds,
        s.timeout_seconds,
        jitter=s.jitter,
    )
