"""Association policy: who may associate with our SCP.

Decided once per association from the A-ASSOCIATE-RQ (calling/called AE title) and the TCP
peer address, before any presentation context is negotiated. A refusal is an A-ASSOCIATE-RJ
with the reason PS3.8 Table 9-21 offers for it; the log line names the calling AE and the IP
(neither is PHI).
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_address

__all__ = ["AssociationPolicy", "Rejection"]

REJECTED_PERMANENT = 0x01
SOURCE_SERVICE_USER = 0x01
REASON_NO_REASON = 0x01
REASON_LOCAL_LIMIT = 0x02  # PS3.8 Table 9-21, source 3 (presentation): local-limit-exceeded
REASON_CALLING_AE = 0x03
REASON_CALLED_AE = 0x07


@dataclass(frozen=True)
class Rejection:
    """A-ASSOCIATE-RJ parameters plus a log-friendly explanation."""

    result: int
    source: int
    diagnostic: int
    reason: str


@dataclass(frozen=True)
class AssociationPolicy:
    """Our AE title, the calling AE titles and source networks we accept."""

    ae_title: str
    allowed_calling_ae_titles: tuple[str, ...] = ()
    allowed_networks: tuple[IPv4Network | IPv6Network, ...] = ()

    def check(self, calling_ae: str, called_ae: str, address: str) -> Rejection | None:
        """``None`` to accept, else the rejection to send.

        The source address is checked first: an unknown host learns nothing about our AE titles.
        There is no PS3.8 reason for "address not allowed", so it is "no reason given".
        """
        if not self.address_allowed(address):
            return Rejection(
                REJECTED_PERMANENT,
                SOURCE_SERVICE_USER,
                REASON_NO_REASON,
                "source address not in scp.allowed_networks",
            )
        if self.allowed_calling_ae_titles and calling_ae.strip() not in {
            a.strip() for a in self.allowed_calling_ae_titles
        }:
            return Rejection(
                REJECTED_PERMANENT,
                SOURCE_SERVICE_USER,
                REASON_CALLING_AE,
                "calling AE title not in scp.allowed_calling_ae_titles",
            )
        if called_ae.strip() != self.ae_title.strip():
            return Rejection(
                REJECTED_PERMANENT,
                SOURCE_SERVICE_USER,
                REASON_CALLED_AE,
                "called AE title is not ours",
            )
        return None

    def address_allowed(self, address: str) -> bool:
        """Whether ``address`` (an IP, IPv4-mapped IPv6 included) is in ``allowed_networks``."""
        try:
            ip = ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == net.version and ip in net for net in self.allowed_networks)
