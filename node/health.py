"""Health that tells the truth: ``/healthz`` and the console's status, with reasons.

Two severities. *Critical* checks (the runner's workers died, a disk is below its watermark, a
claim is stuck, job states cannot be recorded) make ``/healthz`` answer 503 ``unhealthy``: the
node is not doing its work. *Degraded* checks answer 200 ``degraded``: the node accepts and
keeps studies, but some will wait: a vendor or destination is unreachable, a certificate is
missing or expires within ``health.cert_warning_days``, the spool is near its watermark, a job
has run longer than ``health.stuck_job_seconds``. Every failed check carries a reason an admin
can act on (what failed, what to do); reasons name configured names, hosts and paths, never a
study (no PHI).

Reachability is probed in the background (:class:`Prober`, every ``health.probe_seconds``),
not on each scrape: a C-ECHO or a TLS request to a peer that is down takes seconds.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from cryptography import x509

from node.config import NodeConfig
from node.netsettings import destination_settings
from scp import echo
from secure_infer import VendorClient

__all__ = ["Check", "HealthReport", "Prober", "certificate_checks"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Check:
    """One named check; ``reason`` says what is wrong and what to do (empty when ``ok``)."""

    name: str
    ok: bool
    critical: bool = False
    reason: str = ""


@dataclass(frozen=True)
class HealthReport:
    checks: tuple[Check, ...]

    @property
    def status(self) -> str:
        """``ok``, ``degraded`` (a degraded check failed) or ``unhealthy`` (a critical one)."""
        if any(not c.ok and c.critical for c in self.checks):
            return "unhealthy"
        if any(not c.ok for c in self.checks):
            return "degraded"
        return "ok"

    def as_json(self) -> dict[str, object]:
        return {
            "status": self.status,
            "checks": {c.name: c.ok for c in self.checks},
            "reasons": {c.name: c.reason for c in self.checks if not c.ok},
        }


def _cert_check(name: str, path: Path, warn_days: float, now: dt.datetime) -> Check:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        return Check(name, False, reason=f"certificate {path} is missing: install it or fix"
                     " the path in the config")  # fmt: skip
    except (OSError, ValueError) as exc:
        return Check(name, False, reason=f"certificate {path} is unreadable"
                     f" ({type(exc).__name__}): replace it")  # fmt: skip
    left = cert.not_valid_after_utc - now
    if left.total_seconds() <= 0:
        return Check(name, False, reason=f"certificate {path} expired on"
                     f" {cert.not_valid_after_utc:%Y-%m-%d}: renew it")  # fmt: skip
    if left < dt.timedelta(days=warn_days):
        return Check(name, False, reason=f"certificate {path} expires on"
                     f" {cert.not_valid_after_utc:%Y-%m-%d} ({left.days} days):"
                     " renew it before then")  # fmt: skip
    return Check(name, True)


def certificate_checks(cfg: NodeConfig, now: dt.datetime | None = None) -> list[Check]:
    """Every certificate the config names: present, readable, valid beyond the warning."""
    now = now or dt.datetime.now(dt.UTC)
    days = cfg.health.cert_warning_days
    found: list[tuple[str, Path]] = []
    for name, v in cfg.vendors.items():
        found += [(f"vendor_{name}_client_cert", v.client_cert), (f"vendor_{name}_ca", v.ca)]
    if cfg.scp.tls is not None:
        found.append(("scp_tls_cert", cfg.scp.tls.cert))
    for name, d in cfg.destinations.items():
        if d.tls is not None:
            found.append((f"destination_{name}_tls_cert", d.tls.cert))
    if cfg.metrics.tls_cert is not None:
        found.append(("http_tls_cert", cfg.metrics.tls_cert))
    return [_cert_check(n, p, days, now) for n, p in found]


@dataclass
class _Probe:
    ok: bool = True
    reason: str = ""
    checked_at: float = 0.0


@dataclass
class Prober:
    """Background reachability of every vendor (``GET /v1/health`` over mutual TLS, one try)
    and destination (C-ECHO); :meth:`probe_now` runs one round in the caller's thread."""

    cfg: NodeConfig
    key_dir: Path
    interval: float = 30.0
    clock: Callable[[], float] = time.time
    _results: dict[tuple[str, str], _Probe] = field(default_factory=dict)
    _clients: dict[str, VendorClient] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _vendor(self, name: str) -> _Probe:
        try:
            client = self._clients.get(name)
            if client is None:
                s = self.cfg.vendors[name].client_settings()
                s = replace(s, max_attempts=1, connect_timeout=min(s.connect_timeout, 5.0),
                            timeout=min(s.timeout, 10.0))  # fmt: skip
                client = self._clients[name] = VendorClient(s, self.key_dir / name)
            client.health()
        except Exception as exc:
            url = self.cfg.vendors[name].url
            return _Probe(False, f"vendor {name} at {url} is unreachable ({_brief(exc)}):"
                          " check that its server runs and the network path and certificates;"
                          " jobs for it wait and retry, then retry failed ones",
                          self.clock())  # fmt: skip
        return _Probe(True, "", self.clock())

    def _destination(self, name: str) -> _Probe:
        d = self.cfg.destinations[name]
        try:
            code = echo(destination_settings(self.cfg, name), timeout=5.0)
            if code != 0:
                raise RuntimeError(f"C-ECHO status 0x{code:04X}")
        except Exception as exc:
            return _Probe(False, f"destination {name} ({d.ae_title}@{d.host}:{d.port}) does not"
                          f" answer C-ECHO ({_brief(exc)}): check the PACS and its AE"
                          " configuration; results for it wait and retry",
                          self.clock())  # fmt: skip
        return _Probe(True, "", self.clock())

    def probe_now(self) -> None:
        results = {("vendor", n): self._vendor(n) for n in self.cfg.vendors}
        results |= {("destination", n): self._destination(n) for n in self.cfg.destinations}
        with self._lock:
            self._results = results

    def state(self, kind: str, name: str) -> tuple[bool | None, str, float]:
        """(reachable or ``None`` before the first probe, reason, when checked)."""
        with self._lock:
            p = self._results.get((kind, name))
        return (None, "", 0.0) if p is None else (p.ok, p.reason, p.checked_at)

    def checks(self) -> list[Check]:
        with self._lock:
            items = sorted(self._results.items())
        return [Check(f"{k}_{n}_reachable", p.ok, reason=p.reason) for (k, n), p in items]

    def start(self) -> None:
        def run() -> None:
            while True:
                try:
                    self.probe_now()
                except Exception as exc:  # never let the prober die silently
                    log.warning("health probe failed: %s", type(exc).__name__)
                if self._stop.wait(self.interval):
                    return

        self._stop.clear()
        self._thread = threading.Thread(target=run, name="health-probe", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        for c in self._clients.values():
            c.close()
        self._clients.clear()


def _brief(exc: BaseException) -> str:
    """Type and first line of ``exc``, at most 200 characters (peers' errors carry no PHI:
    they describe a connection)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__
