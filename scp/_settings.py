"""Plain settings for the ``scp`` package.

``scp`` never imports the node's pydantic config: the node converts its config into these frozen
dataclasses, so this package stays usable (and testable) on its own.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

__all__ = [
    "CompletionSettings",
    "DestinationSettings",
    "LogId",
    "RetryBudget",
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
class RetryBudget:
    """How long a destination may stay down before a job is quarantined: the sum of the
    waits between its ``attempts`` tries, at least ``min_seconds`` (every jittered wait at its
    floor) and at most ``max_seconds`` (no jitter), not counting the tries themselves."""

    attempts: int
    min_seconds: float
    max_seconds: float

    def describe(self) -> str:
        return (
            f"{self.attempts} attempt(s) over {self.min_seconds / 60:.1f}"
            f"-{self.max_seconds / 60:.1f} min of backoff"
        )


_RNG = random.Random()


@dataclass(frozen=True)
class SenderSettings:
    """Retry policy of the Storage SCU (applied by the node's job runner: one job attempt is
    one send).

    The defaults wait 10 s, 20 s, 40 s, 80 s, then 120 s between tries, 10 tries: 6.2-12.5 min
    of backoff with jitter, which outlasts an ordinary PACS restart (1-2 min) with room to spare.
    """

    max_attempts: int = 10
    initial_backoff_seconds: float = 10.0
    max_backoff_seconds: float = 120.0
    timeout_seconds: float = 30.0
    jitter: float = 0.5
    """Fraction of each wait drawn at random: a wait is uniform in ``[b * (1 - jitter), b]``
    for the nominal ``b``; 1.0 is "full jitter", 0 none. Below 1 the budget has a floor."""

    def backoff(self, attempts: int) -> float:
        """Nominal (un-jittered) delay before the next try after ``attempts`` failed tries."""
        delay = self.initial_backoff_seconds * (2 ** max(0, attempts - 1))
        return float(min(delay, self.max_backoff_seconds))

    def jittered_backoff(self, attempts: int, rng: random.Random | None = None) -> float:
        """The delay actually waited: :meth:`backoff` with ``jitter`` of it drawn from ``rng``
        (a module-wide RNG unless one is given, e.g. a seeded one in tests), so that many
        jobs failing at once against one PACS do not retry in lockstep."""
        nominal = self.backoff(attempts)
        j = min(max(self.jitter, 0.0), 1.0)
        return nominal * (1.0 - j * (rng or _RNG).random())

    def budget(self) -> RetryBudget:
        """The total backoff between the first and the last try (see :class:`RetryBudget`)."""
        waits = [self.backoff(n) for n in range(1, self.max_attempts)]
        j = min(max(self.jitter, 0.0), 1.0)
        total = float(sum(waits))
        return RetryBudget(self.max_attempts, total * (1.0 - j), total)
