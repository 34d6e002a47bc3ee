"""Who may do what at the vendor: per-hospital model permissions, quotas, rate, revocation.

A hospital is its client certificate's subject CN (the TLS layer has already checked that the
vendor's CA signed it). Three checks are made here, each refusal an
:class:`~secure_infer.wire.AccessDeniedError` (403) or
:class:`~secure_infer.wire.RateLimitedError` (429) whose ``code`` is the reason, mapped to JSON
in the one place (:mod:`secure_infer.vendor._http`):

* ``certificate_revoked`` - the certificate's serial is on the client CA's CRL
  (:class:`RevocationList`; the file is re-read when it changes, so a revocation takes effect on
  the next request without a restart; a CRL that is not signed by the client CA is refused and
  the previous one stays in force);
* ``not_enrolled`` / ``model_not_permitted`` / ``context_quota`` - the access policy
  (:class:`AccessPolicy`, from the config's ``access:`` section): which ``name`` or
  ``name@version`` a hospital may use and how many contexts it may keep stored;
* ``rate_limited`` - a token bucket per hospital (``requests_per_minute``; bursts up to one
  minute's worth), counting what costs the vendor work: context uploads and inferences.

No config ``access:`` section means every hospital with a certificate may use every model
without limits (the behaviour before the policy existed). Why hand-written: the rules are a few
dictionary look-ups; the rate limiter is a dozen lines and needs no shared store while one
process serves a hospital.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from secure_infer.modelref import ModelRef, parse_model_ref
from secure_infer.wire import AccessDeniedError, RateLimitedError

__all__ = ["AccessPolicy", "HospitalRules", "RateLimiter", "RevocationList"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HospitalRules:
    """What one hospital may do (``None``: unlimited)."""

    models: tuple[str, ...] = ("*",)
    max_contexts: int | None = None
    requests_per_minute: int | None = None

    def permits(self, served: ModelRef) -> bool:
        """Whether ``served`` (a concrete ``name@version``) is allowed by ``models``."""
        for item in self.models:
            if item == "*" or parse_model_ref(item).matches(served):
                return True
        return False


@dataclass(frozen=True)
class AccessPolicy:
    """Rules by hospital CN; ``default`` for the CNs not listed (``None``: they are refused).

    ``enforced`` is false when the config has no ``access:`` section (everyone, everything).
    """

    hospitals: Mapping[str, HospitalRules] = field(default_factory=dict)
    default: HospitalRules | None = HospitalRules()
    enforced: bool = False

    def rules(self, cn: str) -> HospitalRules:
        """The rules of ``cn``; 403 ``not_enrolled`` for a CN the policy does not know."""
        found = self.hospitals.get(cn, self.default)
        if found is None:
            raise AccessDeniedError(
                "this hospital's certificate is valid but the hospital is not enrolled at this"
                " vendor (no access rules for it)", code="not_enrolled",
            )
        return found

    def check_model(self, cn: str, served: ModelRef) -> None:
        """403 ``model_not_permitted`` unless ``cn`` may use ``served``."""
        rules = self.rules(cn)
        if not rules.permits(served):
            raise AccessDeniedError(
                f"this hospital may not use model {served}; permitted:"
                f" {', '.join(rules.models) or 'none'}", code="model_not_permitted",
            )

    def check_context_quota(self, cn: str, stored: int) -> None:
        """403 ``context_quota`` if ``cn`` already keeps its maximum of stored contexts."""
        limit = self.rules(cn).max_contexts
        if limit is not None and stored >= limit:
            raise AccessDeniedError(
                f"this hospital already stores {stored} context(s), its quota is {limit};"
                " the vendor operator removes old ones", code="context_quota",
            )


class RateLimiter:
    """Token buckets per hospital: ``rpm`` tokens a minute, at most ``rpm`` saved up."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # cn -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, cn: str, rpm: int | None, now: float | None = None) -> None:
        """Spend one token of ``cn``; 429 ``rate_limited`` with the seconds until the next."""
        if rpm is None:
            return
        t = time.monotonic() if now is None else now
        rate = rpm / 60.0
        with self._lock:
            tokens, at = self._buckets.get(cn, (float(rpm), t))
            tokens = min(float(rpm), tokens + (t - at) * rate)
            if tokens < 1.0:
                self._buckets[cn] = (tokens, t)
                wait = max(1, math.ceil((1.0 - tokens) / rate))
                raise RateLimitedError(
                    f"this hospital's limit of {rpm} requests per minute is reached;"
                    f" retry in {wait} s", retry_after=wait,
                )
            self._buckets[cn] = (tokens - 1.0, t)


class RevocationList:
    """The client CA's CRL (PEM or DER), re-read whenever the file changes.

    Raises ``ValueError`` at construction if the file cannot be used (the vendor does not
    start with a CRL it cannot read); later a changed file that fails to load or verify is
    logged and the list already loaded stays in force.
    """

    def __init__(self, path: Path, ca_cert: Path) -> None:
        self.path = path
        self._ca = x509.load_pem_x509_certificate(ca_cert.read_bytes())
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._revoked: frozenset[int] = frozenset()
        self._load(strict=True)

    def _read(self) -> x509.CertificateRevocationList:
        data = self.path.read_bytes()
        crl = (x509.load_pem_x509_crl(data) if data.lstrip().startswith(b"-----")
               else x509.load_der_x509_crl(data))
        if crl.issuer != self._ca.subject or not crl.is_signature_valid(
            self._ca.public_key()  # type: ignore[arg-type]
        ):
            raise ValueError("not signed by the client CA")
        return crl

    def _load(self, strict: bool) -> None:
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp == self._stamp:
                return
            crl = self._read()
        except (OSError, ValueError) as exc:
            if strict:
                raise ValueError(f"{self.path}: cannot use the CRL: {exc}") from None
            log.error("CRL %s cannot be used (%s); the previous list stays in force",
                      self.path, exc)
            return
        nxt = crl.next_update_utc
        if nxt is not None and nxt < dt.datetime.now(dt.UTC):
            log.warning("CRL %s is past its next update (%s); still applied",
                        self.path, nxt.isoformat())
        self._revoked = frozenset(r.serial_number for r in crl)
        self._stamp = stamp
        log.info("CRL %s loaded: %d revoked certificate(s)", self.path, len(self._revoked))

    def check(self, cert_der: bytes) -> None:
        """403 ``certificate_revoked`` if the certificate is on the (current) CRL."""
        with self._lock:
            self._load(strict=False)
            revoked = self._revoked
        cert = x509.load_der_x509_certificate(cert_der)
        if cert.issuer == self._ca.subject and cert.serial_number in revoked:
            raise AccessDeniedError(
                "this client certificate has been revoked by the vendor's CA",
                code="certificate_revoked",
            )
